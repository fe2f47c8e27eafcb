// The "Reference images" card of Generate and img2img: the pictures a model that edits with them
// (Flux.1 Kontext, FLUX.2 [klein]: /opensd/v1/checkpoints says `references`, from the model's family)
// sees beside the prompt, sent in order as the request's reference_images (opensd's field). Added by
// the file picker (several at once), dropped or pasted; shown numbered 1, 2, ... with remove buttons.
// Shown and sent only while the model takes them. `onSize(width, height)` (Generate): a button sets
// the image size from reference 1's, as diffusers' edit pipelines size their output. Kept in memory
// only: images are too large for the form's localStorage, so a reload starts with none.
import { fileToDataURL } from "./api.js";
import { clear, h, icon, toast } from "./dom.js";
import { UNSENT } from "./form.js";
import { filePicker, imageSize, NOT_AN_IMAGE, pastedImage, pickerButton } from "./image_input.js";

export const MAX_REFERENCES = 10; // the server's cap (server/a1111_references.py)

export function referenceCard({ onSize = null } = {}) {
  const images = []; // {name, url, width, height}: data URLs, in the order given
  const list = h("ol", { class: "ref-list", "aria-label": "Reference images, in order" });
  const picker = filePicker("Choose reference images", add, "image/*", { multiple: true });
  const drop = h("div", { class: "drop ref-drop", role: "button", tabindex: "0",
    "aria-label": "Add reference images: drop, paste or press to choose" }, icon("image"), " Add images (drop, paste or choose)");
  const element = h("div", { class: "card stack", role: "group", "aria-label": "Reference images" },
    h("h2", {}, "Reference images"),
    h("p", { class: "muted" }, "The model edits or combines these as the prompt says (\"make image 1 blue\"). ",
      `Up to ${MAX_REFERENCES}; not kept over a reload.`),
    list, drop, picker);
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
    if (images.length >= MAX_REFERENCES) { toast(`At most ${MAX_REFERENCES} reference images.`, "error"); return; }
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
    if (sizeButton) sizeButton.hidden = !images.length;
  }
  render();

  let available = false;
  return {
    element,
    // whether the selected model takes references: the card shows (and is sent) only then
    setAvailable(yes) {
      available = Boolean(yes);
      element.hidden = !available;
      element.toggleAttribute(UNSENT, !available);
    },
    add,
    request: () => (available && images.length ? { reference_images: images.map((im) => im.url) } : {}),
  };
}
