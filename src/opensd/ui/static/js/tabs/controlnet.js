// ControlNet: the units (controlnet_units.js, up to 3) that every Generate and img2img/inpaint request
// carries. Each has an image (upload, drop, paste, or "send to ControlNet"), a preprocessor with a live
// preview of its map (POST /controlnet/detect, the extension's route), a model (/controlnet/model_list),
// weight, start/end, control mode, resize mode, pixel perfect or the preprocessor resolution, and a
// Union ControlNet's control type (the extension's union_control_type names). Each model is listed with
// the family it was made for (/opensd/v1/models, from the file's header): Generate's note flags a unit
// whose ControlNet does not fit the selected model.
import { api, fileToDataURL } from "../api.js";
import { clear, debounce, field, h, icon, toast } from "../dom.js";
import { changed, units } from "../controlnet_units.js";
import { INPAINT_MASK_NOTE, controlnetFamilies, controlnetStem, familyLabel, maskTakers, takesControlType }
  from "../families.js";
import { choose, number, select, slider, syncSliders } from "../form.js";
import { filePicker, NOT_AN_IMAGE, pastedImage, pickerButton, readableImage } from "../image_input.js";
import { EVENTS, on, take } from "../shared.js";

const CONTROL_MODES = [["0", "Balanced"], ["1", "My prompt is more important"], ["2", "ControlNet is more important"]];
const UNION_TYPES = [["Unknown", "Auto (or not a union model)"], ...["OpenPose", "Depth", "Soft Edge", "Hard Edge",
  "Normal Map", "Segmentation", "Tile", "Inpaint"].map((t) => [t, t])];
const RESIZE = [["0", "Just resize"], ["1", "Crop and resize"], ["2", "Resize and fill"]];
// module -> the thresholds it reads: [unit field, label, default, max]
const THRESHOLDS = {
  canny: [["threshold_a", "Low threshold", 100, 255], ["threshold_b", "High threshold", 200, 255]],
  binary: [["threshold_a", "Threshold", 127, 255]],
};

export async function mount(panel) {
  const [models, modules, files] = await Promise.all([api.get("/controlnet/model_list"), api.get("/controlnet/module_list"),
    api.get("/opensd/v1/models")])
    .catch((e) => { toast(e.message, "error"); return [{ model_list: [] }, { module_list: ["none"] }, {}]; });
  const families = controlnetFamilies(files), masked = maskTakers(files);
  const cards = units.map((unit, i) => unitCard(unit, i, models.model_list, modules.module_list, families, masked));
  panel.append(h("div", { class: "stack" },
    h("p", { class: "muted" }, "Enabled units with a model shape every Generate, img2img and Inpaint request. ",
      "In img2img and Inpaint a unit without its own image uses the canvas image."),
    h("div", { class: "cn-units" }, cards.map((c) => c.element))));

  const free = () => cards[Math.max(0, units.findIndex((u) => !u.image))];
  panel.addEventListener("paste", (e) => {
    const file = pastedImage(e);
    if (!file) return;
    e.preventDefault();
    const card = cards.find((c) => c.element.contains(document.activeElement)) || free();
    card.setFile(file);
  });
  async function receive() {
    const sent = take("controlnet");
    if (sent?.image) await free().setFile(sent.image, sent.name);
  }
  on(EVENTS.SEND, ({ target }) => { if (target === "controlnet") receive(); });
  receive();
}

function unitCard(unit, i, models, modules, families, masked) {
  const title = `ControlNet unit ${i + 1}`;
  const enabled = h("input", { type: "checkbox", checked: unit.enabled, "aria-label": `Enable ${title}` });
  const fileInput = filePicker(`Choose an image for ${title}`, (file) => setFile(file));
  const picture = h("div", { class: "drop", role: "button", tabindex: "0", "aria-label": `Image of ${title}: drop, paste or press to choose` });
  const map = h("div", { class: "cn-map", role: "img", "aria-label": `Preprocessed map of ${title}` });
  const remove = h("button", { type: "button", class: "icon-button", "aria-label": `Remove the image of ${title}`,
    onclick: () => setImage(null, "") }, icon("close"));
  const module = select("module", modules.map((m) => [m, m]), unit.module);
  const familyOf = (m) => families[controlnetStem(m)];
  const model = select("model", [["None", "None"],
    ...models.map((m) => [m, familyOf(m) ? `${m} · ${familyLabel(familyOf(m))}` : m])], unit.model);
  const madeFor = h("p", { class: "muted small cn-family" }); // the family the chosen ControlNet runs on
  const weight = slider("Control weight", "weight", { min: 0, max: 2, step: 0.05, value: unit.weight });
  const start = slider("Starting control step", "guidance_start", { min: 0, max: 1, step: 0.01, value: unit.guidance_start });
  const end = slider("Ending control step", "guidance_end", { min: 0, max: 1, step: 0.01, value: unit.guidance_end });
  const mode = select("control_mode", CONTROL_MODES, String(unit.control_mode));
  const resize = select("resize_mode", RESIZE, String(unit.resize_mode));
  const union = select("union_control_type", UNION_TYPES, unit.union_control_type);
  const perfect = h("input", { type: "checkbox", name: "pixel_perfect", checked: unit.pixel_perfect });
  const res = number("processor_res", { min: 64, max: 2048, step: 8, value: unit.processor_res });
  const thresholds = h("div", { class: "grid2" });
  const unused = h("p", { class: "muted cn-unused", role: "status" }); // why an enabled unit is left out
  const form = h("form", { class: "card stack", "aria-label": title },
    h("div", { class: "cn-head" }, h("h2", {}, title), h("label", { class: "check" }, enabled, "Enable")), unused,
    h("div", { class: "cn-images" },
      h("figure", {}, picture, h("figcaption", { class: "toolbar" }, "Control image", remove)),
      h("figure", {}, map, h("figcaption", {}, "Preprocessor preview"))),
    fileInput,
    h("div", { class: "grid2" }, field("Preprocessor", module), field("Model", model)), madeFor,
    thresholds, weight, start, end,
    h("div", { class: "grid2" }, field("Control mode", mode), field("Resize mode", resize)),
    field("Union control type", union),
    h("div", { class: "row" }, h("label", { class: "check" }, perfect, "Pixel perfect"),
      field("Preprocessor resolution", res)));
  form.addEventListener("submit", (e) => e.preventDefault());

  function showThresholds() {
    clear(thresholds, (THRESHOLDS[unit.module] || []).map(([key, label, , max]) =>
      field(label, number(key, { min: 0, max, value: unit[key] }))));
  }
  function showImage() {
    clear(picture, unit.image ? h("img", { src: unit.image, alt: unit.imageName || "control image" })
      : h("p", {}, icon("upload"), " Drop, paste or choose an image"));
    remove.hidden = !unit.image;
    res.disabled = perfect.checked;
  }
  // The model made for this preprocessor (its name holds the module's name), else the first one.
  function pickModel() {
    if (model.value !== "None" || models.length === 0) return;
    const kind = unit.module.split("_")[0];
    model.value = models.find((m) => m.toLowerCase().includes(kind)) || models[0];
  }

  let asked = 0;
  const preview = debounce(async () => {
    const mine = ++asked;
    if (!unit.image) { clear(map, h("p", { class: "muted" }, "No image")); return; }
    const img = new Image();
    img.src = unit.image;
    await img.decode().catch(() => {});
    const side = Math.min(img.naturalWidth, img.naturalHeight) || 512;
    try {
      const r = await api.post("/controlnet/detect", {
        controlnet_module: unit.module, controlnet_input_images: [unit.image],
        controlnet_processor_res: unit.pixel_perfect ? Math.min(2048, Math.max(64, side)) : unit.processor_res,
        controlnet_threshold_a: unit.threshold_a, controlnet_threshold_b: unit.threshold_b,
      });
      if (mine === asked) clear(map, h("img", { src: `data:image/png;base64,${r.images[0]}`, alt: `${unit.module} map` }));
    } catch (e) {
      if (mine === asked) clear(map, h("p", { class: "error" }, e.message));
    }
  }, 200);

  // a cleared or wrong number keeps the unit's value; leaving the field says what is wrong (change)
  const num = (el, old) => (el.checkValidity() ? Number(el.value) : old);
  function read() {
    const before = JSON.stringify([unit.module, unit.processor_res, unit.pixel_perfect, unit.threshold_a, unit.threshold_b]);
    Object.assign(unit, {
      enabled: enabled.checked, module: module.value, model: model.value,
      weight: num(form.elements.weight, unit.weight), guidance_start: num(form.elements.guidance_start, unit.guidance_start),
      guidance_end: num(form.elements.guidance_end, unit.guidance_end), control_mode: Number(mode.value),
      resize_mode: Number(resize.value), pixel_perfect: perfect.checked, processor_res: Math.trunc(num(res, unit.processor_res)),
      union_control_type: union.value,
    });
    for (const [key] of THRESHOLDS[unit.module] || []) {
      if (form.elements[key]) unit[key] = num(form.elements[key], unit[key]);
    }
    const after = JSON.stringify([unit.module, unit.processor_res, unit.pixel_perfect, unit.threshold_a, unit.threshold_b]);
    if (before !== after) preview();
    res.disabled = perfect.checked;
    explain();
    changed();
  }
  // an enabled unit that a request would leave out says so (activeUnits: a model, and an image in Generate)
  function explain() {
    const family = unit.model !== "None" && familyOf(unit.model);
    const typed = takesControlType(family);
    madeFor.textContent = !family ? "" : `Made for ${familyLabel(family)} models: only those take it.${typed ? ""
      : " It reads the map as it is: no control type."}${!masked.has(controlnetStem(unit.model)) ? ""
      : ` It inpaints from a mask: in Inpaint it ${INPAINT_MASK_NOTE} (a Z-Image Fun ControlNet also its image, `
        + "as the image to inpaint); elsewhere it runs without one."}`;
    madeFor.hidden = !family;
    union.disabled = !typed;
    if (!typed && union.value !== "Unknown") { union.value = "Unknown"; unit.union_control_type = "Unknown"; }
    unused.textContent = !unit.enabled ? ""
      : unit.model === "None" ? (models.length ? "Not used yet: choose a model below."
        : "Not used: no ControlNet model is installed (put one in the models folder's ControlNet folder).")
        : !unit.image ? "Generate leaves it out until it has an image; img2img and Inpaint use their canvas image." : "";
    unused.hidden = !unused.textContent;
  }
  module.addEventListener("change", () => {
    for (const [key, , value] of THRESHOLDS[module.value] || []) unit[key] = value;
    unit.module = module.value;
    showThresholds();
    if (unit.image) pickModel();
    read();
  });
  form.addEventListener("input", read);
  form.addEventListener("change", (e) => { if (e.target.type === "number") e.target.reportValidity(); read(); });

  function setImage(image, name) {
    unit.image = image;
    unit.imageName = name;
    if (image) { enabled.checked = true; pickModel(); }
    showImage();
    read();
    preview();
  }
  async function setFile(file, name = file.name || "image") {
    if (!file.type.startsWith("image/") || !(await readableImage(file))) { toast(`${name}: ${NOT_AN_IMAGE}`, "error"); return; }
    setImage(await fileToDataURL(file), name);
  }
  pickerButton(picture, fileInput, (file) => setFile(file));

  if (!choose(model, unit.model)) model.value = "None";
  unit.model = model.value;
  showThresholds();
  showImage();
  explain();
  syncSliders(form);
  preview();
  return { element: form, setFile };
}
