// Generate (txt2img): the shared generation settings (gen_settings.js) plus hires fix (hires_card.js) and the Script
// card (scripts_card.js: X/Y/Z plot, prompt matrix, prompts from file), queued submission
// (POST /opensd/v1/txt2img), and the progress and results of this page's jobs (job_view.js).
// Parameters sent here by other tabs (reuse) arrive through take("generate"). An image pasted anywhere
// in the tab goes to the Reference images card while the model takes them (reference_images.js).
import { api, fileToDataURL } from "../api.js";
import { field, h, icon, toast } from "../dom.js";
import { checkForm, syncSliders } from "../form.js";
import { generationSettings } from "../gen_settings.js";
import { hiresCard } from "../hires_card.js";
import { pastedImage } from "../image_input.js";
import { jobView } from "../job_view.js";
import { saveForm } from "../persist.js";
import { scriptsCard } from "../scripts_card.js";
import { EVENTS, on, take } from "../shared.js";

const KEY = "opensd.generate";

export async function mount(panel) {
  const results = jobView({ upscale, key: KEY });
  // hires upscalers: A1111's latent modes, then None/Lanczos/Nearest and the installed models
  const [settings, modes, upscalers, script] = await Promise.all([generationSettings({ shownSeed: results.shownSeed }),
    api.get("/sdapi/v1/latent-upscale-modes"), api.get("/sdapi/v1/upscalers"), scriptsCard()]);
  const hiresUpscalers = [...modes, ...upscalers].map((u) => [u.name, u.name]);
  const generateButton = h("button", { type: "submit", class: "primary", title: "Ctrl+Enter" }, icon("sparkle"), "Generate");

  const hires = hiresCard(hiresUpscalers, settings);
  const form = h("form", { class: "gen-side", "aria-label": "Text to image settings" },
    settings.promptCard, settings.referenceCard, settings.settingsCard, settings.variationCard, hires.element,
    settings.advancedCard, script.element,
    h("div", { class: "gen-actions" }, generateButton));

  panel.append(h("div", { class: "gen-layout" }, form, results.element));
  settings.attach(panel, form, KEY, generate);
  hires.refresh();
  script.refresh();
  panel.addEventListener("paste", (e) => {
    const file = pastedImage(e);
    if (file && settings.takesReferences()) { e.preventDefault(); settings.addReference(file); }
  });

  function request() {
    return { ...settings.request(), ...script.fields(), ...hires.request() };
  }

  function generate() {
    if (checkForm(form)) results.submit("/opensd/v1/txt2img", request());
  }

  // A1111's ✨ upscale: this form's settings with the hires fix on, one image, the shown image's
  // seeds, and the image itself as the first pass (firstpass_image).
  async function upscale(image, seed, subseed) {
    hires.refresh(true);
    const ok = checkForm(form);
    hires.refresh();
    if (!ok) return;
    const body = { ...request(), ...hires.request({ force: true }), batch_size: 1, n_iter: 1,
      firstpass_image: await fileToDataURL(image) };
    if (seed !== undefined) body.seed = seed;
    if (subseed !== undefined && body.subseed_strength) body.subseed = subseed;
    delete body.script_name; delete body.script_args; // the image is one image, not a script's run
    results.submit("/opensd/v1/txt2img", body);
  }

  // Parameters from the gallery or PNG info: fill the form so the same pixels come out again.
  function apply(req) {
    settings.apply(req);
    script.reset();
    for (const what of hires.apply(req)) toast(`${what} is not available here`, "error");
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

