// The Models tab's merge and convert forms: each posts a queued job (/opensd/v1/models/merge or
// /convert) and shows its progress line; the tab follows the job and rescans when it is saved.
import { api } from "./api.js";
import { field, h, icon, toast } from "./dom.js";
import { select, setOptions, slider } from "./form.js";

const MODES = [["weighted_sum", "Weighted sum: A × (1 − M) + B × M"], ["add_difference", "Add difference: A + (B − C) × M"]];

function check(label, name, checked = false) {
  return h("label", { class: "check" }, h("input", { type: "checkbox", name, checked }), label);
}

function outputField(placeholder) {
  return field("Output name", h("input", { name: "output", required: true, maxlength: 120, placeholder,
    autocomplete: "off", spellcheck: "false" }));
}

// `onQueued(answer, what)` is told of each job queued; returns {element, setCheckpoints(names), progress(...)}.
export function toolForms({ onQueued }) {
  const a = select("a", []), b = select("b", []), c = select("c", []);
  const source = select("source", []);
  const mode = select("mode", MODES, "weighted_sum");
  const cField = field("Model C", c);
  const merge = h("form", { class: "stack", "aria-label": "Merge checkpoints" },
    h("div", { class: "grid2" }, field("Model A", a), field("Model B", b), cField),
    field("Mode", mode),
    slider("Multiplier M", "multiplier", { min: 0, max: 1, step: 0.05, value: 0.5 }),
    h("div", { class: "grid2" }, outputField("merged.safetensors"), h("div", { class: "stack" },
      check("Save as fp16 (half the size)", "fp16"), check("Replace an existing file", "overwrite"))),
    h("button", { type: "submit", class: "primary" }, icon("sparkle"), "Merge"));
  const convert = h("form", { class: "stack", "aria-label": "Convert a checkpoint" },
    field("Checkpoint", source),
    field("Convert to", select("to", [["safetensors", "one .safetensors file"], ["diffusers", "a diffusers folder"]])),
    h("div", { class: "grid2" }, outputField("converted.safetensors"), h("div", { class: "stack" },
      check("Save as fp16", "fp16"), check("EMA weights only", "ema_only"), check("Replace an existing output", "overwrite"))),
    h("button", { type: "submit", class: "primary" }, icon("swap"), "Convert"));
  const line = h("p", { class: "muted", role: "status" });
  const bar = h("div");
  const status = h("div", { class: "progress-card stack", hidden: true }, line, h("div", { class: "bar" }, bar));

  const showC = () => { cField.hidden = mode.value !== "add_difference"; };
  mode.addEventListener("change", showC);
  showC();

  async function submit(e, path, body, what) {
    e.preventDefault();
    const button = e.target.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      onQueued(await api.post(path, body), what);
    } catch (err) { toast(err.message, "error"); } finally { button.disabled = false; }
  }
  merge.addEventListener("submit", (e) => {
    const v = merge.elements;
    submit(e, "/opensd/v1/models/merge", {
      a: a.value, b: b.value, c: mode.value === "add_difference" ? c.value : null, mode: mode.value,
      multiplier: Number(v.multiplier.value), fp16: v.fp16.checked, output: v.output.value.trim(),
      overwrite: v.overwrite.checked,
    }, `Merge into ${v.output.value.trim()}`);
  });
  convert.addEventListener("submit", (e) => {
    const v = convert.elements;
    submit(e, "/opensd/v1/models/convert", {
      source: source.value, to: v.to.value, fp16: v.fp16.checked, ema_only: v.ema_only.checked,
      output: v.output.value.trim(), overwrite: v.overwrite.checked,
    }, `Convert into ${v.output.value.trim()}`);
  });

  return {
    element: h("div", { class: "stack" },
      h("section", { class: "card stack", "aria-label": "Merge" }, h("h2", {}, "Merge checkpoints"), merge),
      h("section", { class: "card stack", "aria-label": "Convert" }, h("h2", {}, "Convert"), convert),
      status),
    setCheckpoints(names) {
      const options = names.map((n) => [n, n]);
      for (const el of [a, b, c, source]) setOptions(el, options, el.value || undefined);
    },
    progress(what, text, fraction, failed = false) {
      status.hidden = false;
      line.textContent = `${what}: ${text}`;
      line.className = failed ? "error" : "muted";
      bar.style.width = `${Math.round((fraction ?? 0) * 100)}%`;
    },
  };
}
