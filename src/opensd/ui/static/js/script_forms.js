// The forms of A1111's smaller scripts: prompt matrix, prompts from file or textbox, SD upscale
// (img2img). Each gives its element, refresh() and args(): script_args in A1111's order.
import { api } from "./api.js";
import { field, h, icon, toast } from "./dom.js";
import { number, select, slider, syncSliders } from "./form.js";
import { filePicker } from "./image_input.js";

const check = (name, label) => h("label", { class: "check" }, h("input", { type: "checkbox", name }), label);
const checked = (element, name) => element.querySelector(`input[name=${name}]`).checked;
const nothing = () => {};

// [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]
export function matrixForm() {
  const type = select("pm_prompt_type", [["positive", "Positive"], ["negative", "Negative"]], "positive");
  const delimiter = select("pm_delimiter", [["comma", "Comma"], ["space", "Space"]], "comma");
  const margin = number("pm_margin_size", { min: 0, max: 500, value: 0 });
  const element = h("div", { class: "stack" },
    h("p", { class: "muted" }, "Separate the optional parts of the prompt with |: \"heart | red | glossy\" makes ",
      "one image for each combination of the parts (4 here) and a grid of them."),
    h("div", { class: "grid2" },
      check("pm_put_at_start", "Put variable parts at start of prompt"),
      check("pm_different_seeds", "Use different seed for each picture"),
      field("Select prompt", type), field("Select joining char", delimiter), field("Grid margins (px)", margin)));
  return {
    element, refresh: nothing,
    args: () => [checked(element, "pm_put_at_start"), checked(element, "pm_different_seeds"), type.value,
      delimiter.value, Math.trunc(Number(margin.value)) || 0],
  };
}

// [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]
export function promptsFileForm() {
  const position = select("pf_prompt_position", [["start", "Start"], ["end", "End"]], "start");
  const text = h("textarea", { name: "pf_prompt_txt", rows: 6, spellcheck: "false",
    placeholder: "one prompt per line, or options: --prompt \"a red apple\" --steps 20 --seed 5" });
  const picker = filePicker("Choose a text file of prompts", async (file) => {
    try {
      text.value = await file.text();
      text.dispatchEvent(new Event("input", { bubbles: true }));
    } catch (e) { toast(`Cannot read ${file.name}: ${e.message}`, "error"); }
  }, ".txt,text/plain");
  const element = h("div", { class: "stack" },
    h("div", { class: "grid2" },
      check("pf_iterate", "Iterate seed every line"), check("pf_iterate_batch", "Use same random seed for all lines"),
      field("Insert prompts at the", position)),
    field("List of prompt inputs", text), picker,
    h("div", { class: "toolbar" }, h("button", { type: "button", onclick: () => picker.click() }, icon("upload"),
      "Load a text file")));
  return {
    element, refresh: nothing,
    args: () => [checked(element, "pf_iterate"), checked(element, "pf_iterate_batch"), position.value, text.value],
  };
}

// [info (unused), overlap, upscaler_index, scale_factor]; the tiles are the settings' width x height
export async function sdUpscaleForm() {
  const upscalers = await api.get("/sdapi/v1/upscalers").catch((e) => { toast(e.message, "error"); return []; });
  const upscaler = select("su_upscaler", upscalers.map((u, i) => [String(i), u.name]),
    String(Math.max(0, upscalers.findIndex((u) => u.name === "Lanczos"))));
  const overlap = number("su_overlap", { min: 0, max: 256, step: 8, value: 64 });
  const scale = slider("Scale factor", "su_scale_factor", { min: 1, max: 4, step: 0.05, value: 2 });
  const element = h("div", { class: "stack" },
    h("p", { class: "muted" }, "The image is upscaled, cut into tiles of the Width × Height below and each tile ",
      "repainted at the denoising strength."),
    h("div", { class: "grid2" }, field("Upscaler", upscaler), field("Tile overlap (px)", overlap)), scale);
  return {
    element, refresh: () => syncSliders(element),
    args: () => [null, Math.trunc(Number(overlap.value)), Number(upscaler.value),
      Number(element.querySelector("input[name=su_scale_factor]").value)],
  };
}
