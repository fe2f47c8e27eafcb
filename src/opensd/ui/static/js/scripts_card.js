// The Script card of Generate and img2img: A1111's selectable scripts that the server lists for the
// tab's mode (GET /sdapi/v1/script-info), each with its form. A request carries `script_name` and
// `script_args` in the order A1111's script takes them, as A1111's own UI sends them; the job's
// grids come back first, then its single images (job_view.js shows them in that order).
import { api } from "./api.js";
import { field, h, toast } from "./dom.js";
import { select } from "./form.js";
import { matrixForm, promptsFileForm, sdUpscaleForm } from "./script_forms.js";
import { xyzForm } from "./script_xyz.js";

// the server's script name (A1111's title in lower case) -> [title, form builder]
const FORMS = {
  "x/y/z plot": ["X/Y/Z plot", xyzForm],
  "prompt matrix": ["Prompt matrix", matrixForm],
  "prompts from file or textbox": ["Prompts from file or textbox", promptsFileForm],
  "sd upscale": ["SD upscale", sdUpscaleForm],
};

export async function scriptsCard({ img2img = false } = {}) {
  const listed = await api.get("/sdapi/v1/script-info").catch((e) => { toast(e.message, "error"); return []; });
  const names = listed.filter((s) => !s.is_alwayson && s.is_img2img === img2img && FORMS[s.name]).map((s) => s.name);
  const forms = await Promise.all(names.map((n) => FORMS[n][1]({ img2img })));
  const chooser = select("script", [["", "None"], ...names.map((n) => [n, FORMS[n][0]])], "");
  const panes = forms.map((f, i) => h("div", { class: "stack", "data-script": names[i] }, f.element));
  const element = h("div", { class: "card stack", role: "group", "aria-label": "Script" }, field("Script", chooser), panes);
  const show = () => panes.forEach((pane, i) => { pane.hidden = chooser.value !== names[i]; });
  chooser.addEventListener("change", show);
  show();

  return {
    element,
    refresh() { show(); forms.forEach((f) => f.refresh()); }, // after the form's remembered values are back
    // The request fields of the chosen script ({} for none).
    fields() {
      const i = names.indexOf(chooser.value);
      return i < 0 ? {} : { script_name: FORMS[names[i]][0], script_args: forms[i].args() };
    },
    reset() { chooser.value = ""; show(); }, // reused parameters are one image's: no script
  };
}
