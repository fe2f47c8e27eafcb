// The "Reference images" card of Generate and img2img: the pictures a model that edits with them
// (Flux.1 Kontext, FLUX.2, Qwen-Image-Edit: /opensd/v1/checkpoints says `references`, from the model's family)
// sees beside the prompt, sent in order as the request's reference_images (opensd's field). Added by
// the file picker (several at once), dropped or pasted; shown numbered 1, 2, ... with remove buttons.
// Sent only while the model takes them, at most as many as it takes (the list's `max_references`:
// Qwen-Image-Edit one, Edit-2509/2511 and the others 10); a model that takes none hides the card, or,
// while it holds images, shows them greyed with why they are not sent (they come back with a model that
// takes them). `onSize(width, height)` (Generate): a button sets the image size from reference 1's, as
// diffusers' edit pipelines size their output. Kept in memory only: images are too large for the form's
// localStorage, so a reload starts with none.
import { fileToDataURL } from "./api.js";
import { clear, h, icon, toast } from "./dom.js";
import { UNSENT } from "./form.js";
import { filePicker, imageSize, NOT_AN_IMAGE, pastedImage, pickerButton } from "./image_input.js";

// the families whose models take references, for the note of a model that takes none (families.reference_families)
const TAKING = "Flux.1 Kontext, FLUX.2 and Qwen-Image-Edit";
const pictures = (n) => `${n} reference image${n === 1 ? "" : "s"}`;

export function referenceCard({ onSize = null } = {}) {
  const images = []; // {name, url, width, height}: data URLs, in the order given
  const list = h("ol", { class: "ref-list", "aria-label": "Reference images, in order" });
  const picker = filePicker("Choose reference images", add, "image/*", { multiple: true });
  const drop = h("div", { class: "drop ref-drop", role: "button", tabindex: "0",
    "aria-label": "Add reference images: drop, paste or press to choose" }, icon("image"), " Add images (drop, paste or choose)");
  const about = h("p", { class: "muted" });
  // why what is shown is not (all) sent: a model taking none, or fewer than given
  const problem = h("p", { class: "error ref-problem", role: "status" });
  const element = h("div", { class: "card stack", role: "group", "aria-label": "Reference images" },
    h("h2", {}, "Reference images"), about, problem, list, drop, picker);
  const sizeButton = onSize ? h("button", { type: "button", class: "small",
    onclick: () => onSize(images[0].width, images[0].height) }, "Use the size of image 1") : null;
  if (sizeButton) drop.after(sizeButton);
  pickerButton(drop, picker, add, { multiple: true });
  element.addEventListener("paste", (e) => { // on the card; img2img's own paste (the canvas) is not asked then
    const file = pastedImage(e);
    if (file) { e.preventDefault(); e.stopPropagation(); add(file); }
  });

  // files read one after another, so they stay in the order given
  let reading = Promise.resolve();
  function add(file) {
    reading = reading.then(() => read(file)).catch((e) => toast(e.message, "error"));
    return reading;
  }
  async function read(file, name = file.name || "pasted image") {
    if (!model.max) { toast(`${model.label} takes no reference images.`, "error"); return; }
    if (images.length >= model.max) { toast(`${model.label} takes at most ${pictures(model.max)}.`, "error"); return; }
    const size = file.type.startsWith("image/") ? await imageSize(file) : null;
    if (!size) { toast(`${name}: ${NOT_AN_IMAGE}`, "error"); return; }
    images.push({ name, url: await fileToDataURL(file), ...size });
    render();
  }
  function render() {
    clear(list, images.map((im, i) => h("li", {},
      h("figure", {}, h("img", { src: im.url, alt: `Reference ${i + 1}: ${im.name}` }),
        h("figcaption", {}, h("span", { class: "ref-number", "aria-hidden": "true" }, String(i + 1)),
          h("span", { class: "muted ref-name", title: im.name }, im.name))),
      h("button", { type: "button", class: "icon-button ref-remove", "aria-label": `Remove reference ${i + 1} (${im.name})`,
        title: "Remove", onclick: () => { images.splice(i, 1); render(); drop.focus(); } }, icon("close")))));
    list.hidden = !images.length;
    if (sizeButton) sizeButton.hidden = !images.length || !model.max;
    explain();
  }
  function explain() {
    about.textContent = "The model edits or combines these as the prompt says (\"make image 1 blue\"). " +
      `${model.label} takes ${model.max === 1 ? "one" : `up to ${model.max}`}; not kept over a reload.`;
    about.hidden = !model.max;
    problem.textContent = !model.max
      ? `${model.label} takes no reference images: these are not sent. ${TAKING} models take them.`
      : images.length > model.max // only Qwen-Image-Edit takes fewer than the server's 10
        ? `${model.label} takes ${pictures(model.max)}; remove ${images.length - model.max} (Qwen-Image-Edit-2509/2511 take several).`
        : "";
    problem.hidden = !problem.textContent;
    element.hidden = !model.max && !images.length;
    element.classList.toggle("ref-unsent", !model.max);
    drop.hidden = !model.max;
    element.toggleAttribute(UNSENT, !model.max);
  }

  let model = { max: 0, label: "This model" };
  render();
  return {
    element,
    // the selected checkpoint (/opensd/v1/checkpoints' item): whether it takes references, and how many
    setModel(checkpoint) {
      model = { max: (checkpoint?.references && checkpoint.max_references) || 0,
        label: checkpoint?.title || checkpoint?.name || "This model" };
      render();
    },
    takes: () => model.max > 0,
    add,
    request: () => (model.max && images.length ? { reference_images: images.map((im) => im.url) } : {}),
  };
}
