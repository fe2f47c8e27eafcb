// img2img and Inpaint: one module mounted as two tabs (ctx.id "img2img" or "inpaint"). The canvas
// (canvas_editor.js) holds the image; Inpaint adds the mask tools, the inpainting settings and
// outpainting (extend the canvas on any side). The rest of the form is Generate's (gen_settings.js);
// requests are queued on POST /opensd/v1/img2img. Images sent here (gallery, results, PNG files)
// arrive through take(ctx.id); a result sent to this tab goes back onto the canvas. The Script card
// (scripts_card.js) adds img2img's scripts, SD upscale among them. "Describe image (tags)" under the
// canvas puts the picture's tags into the prompt (describe_image.js). The Reference images card
// (reference_images.js) shows for the models that edit with them: the canvas is the picture the
// sampling starts from, the references what the model sees beside the prompt.
import { canvasEditor } from "../canvas_editor.js";
import { describeButton } from "../describe_image.js";
import { field, h, icon, toast } from "../dom.js";
import { checkForm, number, select, slider, syncSliders } from "../form.js";
import { generationSettings } from "../gen_settings.js";
import { pastedImage } from "../image_input.js";
import { jobView } from "../job_view.js";
import { saveForm } from "../persist.js";
import { scriptsCard } from "../scripts_card.js";
import { EVENTS, on, take } from "../shared.js";

const RESIZE = [["0", "Just resize"], ["1", "Crop and resize"], ["2", "Resize and fill"]];
const FILL = [["0", "Fill"], ["1", "Original"], ["2", "Latent noise"], ["3", "Latent nothing"]];
const SIDES = [["left", "←", "Left"], ["right", "→", "Right"], ["top", "↑", "Top"], ["bottom", "↓", "Bottom"]];
const round8 = (v) => Math.max(8, Math.round(v / 8) * 8);
// Soft inpainting's settings in A1111's argument order: name, label, slider min, max, step, default
const SOFT = [["schedule_bias", "Schedule bias", 0, 8, 0.1, 1], ["preservation_strength", "Preservation strength", 0, 8, 0.05, 0.5],
  ["transition_contrast_boost", "Transition contrast boost", 1, 32, 0.5, 4], ["mask_influence", "Mask influence", 0, 1, 0.05, 0],
  ["difference_threshold", "Difference threshold", 0, 8, 0.25, 0.5], ["difference_contrast", "Difference contrast", 0, 8, 0.25, 2]];

export async function mount(panel, ctx) {
  const inpaint = ctx.id === "inpaint";
  const key = `opensd.${ctx.id}`;
  const editor = canvasEditor({ masking: inpaint, label: inpaint ? "Inpainting canvas" : "img2img image",
    onImage: (w, hh) => settings.setSize(round8(w), round8(hh)) }); // no image can arrive before settings exist
  const results = jobView({ key });
  const [settings, script] = await Promise.all([
    generationSettings({ img2img: true, inpaint, shownSeed: results.shownSeed, sizeFollowsModel: false }),
    scriptsCard({ img2img: true })]);
  const extendBy = number("extend_by", { min: 8, max: 1024, step: 8, value: 64, required: false }) // grow() checks it;
  const outpaint = inpaint ? h("div", { class: "card stack", role: "group", "aria-label": "Outpainting" },
    h("h2", {}, "Outpaint"),
    h("div", { class: "row" }, field("Extend by (pixels)", extendBy),
      SIDES.map(([side, arrow, name]) => h("button", { type: "button", "data-side": side,
        "aria-label": `Extend the canvas ${name.toLowerCase()}`, onclick: () => grow(side) }, `${arrow} ${name}`))),
    h("p", { class: "muted" }, "The new border becomes the mask; denoising goes to 1 and masked content to Fill.")) : null;
  const inpaintSettings = inpaint ? [
    slider("Mask blur", "mask_blur", { min: 0, max: 64, value: 4 }),
    h("div", { class: "grid2" },
      field("Mask mode", select("inpainting_mask_invert", [["0", "Inpaint masked"], ["1", "Inpaint not masked"]], "0")),
      field("Masked content", select("inpainting_fill", FILL, "1")),
      field("Inpaint area", select("inpaint_full_res", [["0", "Whole picture"], ["1", "Only masked"]], "0")),
      field("Only masked padding (pixels)", number("inpaint_full_res_padding", { min: 0, max: 256, value: 32 })))] : null;
  const soft = inpaint ? h("details", { class: "card" }, h("summary", {}, "Soft inpainting"),
    h("div", { class: "stack" },
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "soft_inpainting" }), "Soft inpainting"),
      h("p", { class: "muted" }, "The mask's grey levels blend the original with the new content: use a large mask blur."),
      h("div", { class: "grid2" }, SOFT.map(([name, label, min, max, step, value]) =>
        slider(label, `soft_${name}`, { min, max, step, value }))))) : null;
  const describe = describeButton({ image: () => (editor.hasImage() ? editor.imageDataURL() : null), prompt: settings.prompt });
  const generateButton = h("button", { type: "submit", class: "primary", title: "Ctrl+Enter" }, icon("sparkle"), "Generate");
  const form = h("form", { class: "gen-side", "aria-label": inpaint ? "Inpainting settings" : "Image to image settings" },
    h("div", { class: "card stack" }, editor.element, describe.element), outpaint, settings.promptCard, settings.referenceCard,
    h("div", { class: "card stack" },
      slider("Denoising strength", "denoising_strength", { min: 0, max: 1, step: 0.01, value: 0.75 }),
      field("Resize mode", select("resize_mode", RESIZE, "0")), inpaintSettings), soft,
    settings.settingsCard, settings.variationCard, settings.advancedCard, script.element,
    h("div", { class: "gen-actions" }, generateButton));
  panel.append(h("div", { class: "gen-layout" }, form, results.element));
  settings.attach(panel, form, key, generate);
  script.refresh();
  panel.addEventListener("paste", (e) => {
    const file = pastedImage(e);
    if (file) { e.preventDefault(); editor.load(file); }
  });

  const v = form.elements;
  const set = (name, value) => { v[name].value = value; v[name].dispatchEvent(new Event("input", { bubbles: true })); };
  function grow(side) {
    const px = Math.trunc(Number(extendBy.value));
    if (!(px > 0)) { toast("Extend by: give a number of pixels above 0.", "error"); return; }
    if (!editor.extend({ [side]: px })) { toast("Load an image first: then the canvas can grow."); return; }
    set("denoising_strength", 1);
    set("inpainting_fill", "0");
    set("inpaint_full_res", "0");
    syncSliders(form);
  }

  function request() {
    const body = {
      ...settings.request(), ...script.fields(), init_images: [editor.imageDataURL()],
      denoising_strength: Number(v.denoising_strength.value), resize_mode: Number(v.resize_mode.value),
    };
    if (!inpaint) return body;
    const mask = editor.maskDataURL();
    if (!mask) return null;
    Object.assign(body, {
      mask, mask_blur: Math.trunc(Number(v.mask_blur.value)), inpainting_fill: Number(v.inpainting_fill.value),
      inpaint_full_res: v.inpaint_full_res.value === "1", inpainting_mask_invert: Number(v.inpainting_mask_invert.value),
      inpaint_full_res_padding: Math.trunc(Number(v.inpaint_full_res_padding.value)),
    });
    if (v.soft_inpainting.checked) { // A1111's always-on script: [enabled, the six settings in its order]
      const args = [true, ...SOFT.map(([name]) => Number(v[`soft_${name}`].value))];
      body.alwayson_scripts = { ...(body.alwayson_scripts || {}), "soft inpainting": { args } };
    }
    return body;
  }
  function generate() {
    if (!checkForm(form)) return;
    if (!editor.hasImage()) { toast("Load an image onto the canvas first (Upload, paste or drop).", "error"); return; }
    const body = request();
    if (!body) { toast("Paint a mask over the part to repaint first (Brush), or extend the canvas.", "error"); return; }
    results.submit("/opensd/v1/img2img", body);
  }

  // An image (and maybe its parameters) sent here from the gallery, a result or another tab.
  async function receive() {
    const sent = take(ctx.id);
    if (!sent?.image) return;
    if (sent.params) settings.apply(sent.params);
    await editor.load(sent.image);
    syncSliders(form);
    saveForm(form, key);
  }
  on(EVENTS.SEND, ({ target }) => { if (target === ctx.id) receive(); });
  receive();
}
