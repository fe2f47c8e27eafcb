// The X/Y/Z plot's form: three axes, each a type from the server's own list (GET /opensd/v1/xyz-axes,
// A1111's indices for this mode) with its values: typed (numbers take ranges such as 1-5 [3]) or, where
// the axis has choices, picked from them (A1111's dropdown; "Use text inputs" types them instead);
// then the grid options. args() is script_args in the order A1111's script takes them.
import { api } from "./api.js";
import { field, h, toast } from "./dom.js";
import { chips, number } from "./form.js";

const HINTS = { int: "e.g. 10, 20, 30 or 10-30 (+10) or 10-30 [3]", float: "e.g. 5, 7.5 or 5-9 [3]",
  text: "comma-separated: a, b, \"c, d\"", order: "the words to reorder: red, cat" };
const WHICH = ["x", "y", "z"];
const NOTHING = { index: 0, label: "Nothing", kind: "text", available: true, choices: null }; // no list came

function axisRow(which, axes, csvMode) {
  const W = which.toUpperCase();
  const type = h("select", { name: `xyz_${which}_type` },
    axes.map((a) => h("option", { value: String(a.index), disabled: !a.available, title: a.reason || null },
      a.available ? a.label : `${a.label} (not available)`)));
  const values = h("input", { type: "text", name: `xyz_${which}_values`, autocomplete: "off", spellcheck: "false" });
  const picked = chips(`xyz_${which}_dropdown`, `${W} values to plot`);
  const fill = h("button", { type: "button", class: "small", onclick: () => picked.set(axis().choices || []) }, `All ${W} values`);
  const valuesField = field(`${W} values`, values);
  const pickField = h("div", { class: "field xyz-pick" }, h("span", { class: "label" }, `${W} values`), picked.element,
    h("div", { class: "toolbar" }, fill));
  const element = h("div", { class: "xyz-axis stack" }, field(`${W} type`, type), valuesField, pickField);
  const axis = () => axes.find((a) => String(a.index) === type.value) || axes[0] || NOTHING;

  function show() {
    const a = axis();
    const pick = Boolean(a.choices) && !csvMode.checked;
    values.placeholder = HINTS[a.kind] || "";
    valuesField.hidden = a.label === "Nothing" || pick;
    pickField.hidden = !pick;
  }
  type.addEventListener("change", () => { picked.setChoices(axis().choices || []); picked.set([]); show(); });
  csvMode.addEventListener("change", show);
  return {
    element,
    refresh() { picked.setChoices(axis().choices || []); show(); },
    args: () => [Number(type.value), values.value, picked.get()],
    setType(label) { type.value = String(axes.find((a) => a.label === label)?.index ?? 0); },
  };
}

export async function xyzForm({ img2img }) {
  const all = await api.get("/opensd/v1/xyz-axes")
    .catch((e) => { toast(e.message, "error"); return { txt2img: [], img2img: [] }; });
  const axes = all[img2img ? "img2img" : "txt2img"];
  const check = (name, label, checked = false) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: `xyz_${name}`, checked }), label);
  const csvMode = h("input", { type: "checkbox", name: "xyz_csv_mode" });
  const rows = WHICH.map((w) => axisRow(w, axes, csvMode));
  rows[0].setType("Seed"); // A1111's first axis
  const margin = number("xyz_margin_size", { min: 0, max: 500, value: 0 });
  const options = h("div", { class: "grid2" },
    check("draw_legend", "Draw legend", true), check("no_fixed_seeds", "Keep -1 for seeds"),
    WHICH.map((w) => check(`vary_seeds_${w}`, `Vary seeds for ${w.toUpperCase()}`)),
    check("include_lone_images", "Include Sub Images"), check("include_sub_grids", "Include Sub Grids"),
    h("label", { class: "check" }, csvMode, "Use text inputs instead of dropdowns"),
    field("Grid margins (px)", margin));
  const element = h("div", { class: "stack" }, h("div", { class: "stack" }, rows.map((r) => r.element)), options);
  const flag = (name) => element.querySelector(`input[name=xyz_${name}]`).checked;
  rows.forEach((r) => r.refresh());

  return {
    element,
    refresh() { rows.forEach((r) => r.refresh()); },
    args: () => [...rows.flatMap((r) => r.args()), flag("draw_legend"), flag("include_lone_images"),
      flag("include_sub_grids"), flag("no_fixed_seeds"), ...WHICH.map((w) => flag(`vary_seeds_${w}`)),
      Math.trunc(Number(margin.value)) || 0, csvMode.checked],
  };
}
