// Generate (txt2img): the shared generation settings (gen_settings.js) plus hires fix and the Script
// card (scripts_card.js: X/Y/Z plot, prompt matrix, prompts from file), queued submission
// (POST /opensd/v1/txt2img), and the progress and results of this page's jobs (job_view.js).
// Parameters sent here by other tabs (reuse) arrive through take("generate").
import { api } from "../api.js";
import { field, h, icon, toast } from "../dom.js";
import { choose, number, select, slider, syncSliders } from "../form.js";
import { generationSettings } from "../gen_settings.js";
import { jobView } from "../job_view.js";
import { saveForm } from "../persist.js";
import { scriptsCard } from "../scripts_card.js";
import { EVENTS, on, take } from "../shared.js";

const KEY = "opensd.generate";

export async function mount(panel) {
  const results = jobView();
  // hires upscalers: A1111's latent modes, then None/Lanczos/Nearest and the installed models
  const [settings, modes, upscalers, script] = await Promise.all([generationSettings({ shownSeed: results.shownSeed }),
    api.get("/sdapi/v1/latent-upscale-modes"), api.get("/sdapi/v1/upscalers"), scriptsCard()]);
  const hiresUpscalers = [...modes, ...upscalers].map((u) => [u.name, u.name]);
  const generateButton = h("button", { type: "submit", class: "primary", title: "Ctrl+Enter" }, icon("sparkle"), "Generate");

  const form = h("form", { class: "gen-side", "aria-label": "Text to image settings" },
    settings.promptCard, settings.settingsCard, settings.variationCard,
    h("details", { class: "card" }, h("summary", {}, "Hires fix"),
      h("div", { class: "stack" },
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "enable_hr" }), "Enable hires fix"),
        h("div", { class: "grid2" },
          field("Upscaler", select("hr_upscaler", hiresUpscalers, "Latent")),
          field("Upscale by", number("hr_scale", { min: 1, max: 4, step: 0.05, value: 2 })),
          field("Hires steps (0: same)", number("hr_second_pass_steps", { min: 0, max: 150, value: 0 }))),
        slider("Denoising strength", "denoising_strength", { min: 0, max: 1, step: 0.01, value: 0.7 }))),
    settings.advancedCard, script.element,
    h("div", { class: "gen-actions" }, generateButton));

  panel.append(h("div", { class: "gen-layout" }, form, results.element));
  settings.attach(panel, form, KEY, generate);
  script.refresh();

  function request() {
    const v = form.elements;
    const int = (name) => Math.trunc(Number(v[name].value));
    const num = (name) => Number(v[name].value);
    const body = { ...settings.request(), ...script.fields() };
    if (v.enable_hr.checked) {
      Object.assign(body, { enable_hr: true, hr_upscaler: v.hr_upscaler.value, hr_scale: num("hr_scale"),
        hr_second_pass_steps: int("hr_second_pass_steps"), denoising_strength: num("denoising_strength") });
    }
    return body;
  }

  function generate() {
    if (form.reportValidity()) results.submit("/opensd/v1/txt2img", request());
  }

  // Parameters from the gallery or PNG info: fill the form so the same pixels come out again.
  function apply(req) {
    const v = form.elements;
    settings.apply(req);
    script.reset();
    const set = (name, value) => { if (value !== undefined && value !== null) v[name].value = value; };
    v.enable_hr.checked = Boolean(req.enable_hr);
    if (req.enable_hr) {
      set("hr_scale", req.hr_scale);
      set("hr_second_pass_steps", req.hr_second_pass_steps ?? 0);
      set("denoising_strength", req.denoising_strength);
      if (req.hr_upscaler) choose(v.hr_upscaler, req.hr_upscaler);
    }
    syncSliders(form);
    saveForm(form, KEY);
  }
  function receive() {
    const sent = take("generate");
    if (!sent?.params) return;
    apply(sent.params);
    for (const note of sent.notes || []) toast(note);
    toast("Parameters applied: press Generate for the same image.");
  }
  on(EVENTS.SEND, ({ target }) => { if (target === "generate") receive(); });
  receive();
}

