// PNG info: drop, paste or pick any image (ours, A1111's PNG/JPEG/WebP, ComfyUI's with its embedded
// prompt and workflow); the server reads it (POST /opensd/v1/image-info); one click sends the
// parameters to Generate. "Describe image (tags)" fills a Tags box with the picture's tags
// (describe_image.js), to copy into a prompt.
import { api, fileToDataURL } from "../api.js";
import { describeButton } from "../describe_image.js";
import { clear, field, h, icon, paramsTable, toast } from "../dom.js";
import { filePicker, NOT_AN_IMAGE, pastedImage, pickerButton, readableImage } from "../image_input.js";
import { sendTo } from "../shared.js";

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

export async function mount(panel) {
  const input = filePicker("Choose an image", read, "image/png,image/jpeg,image/webp");
  const drop = h("div", { class: "drop", role: "button", tabindex: "0", "aria-label": "Drop an image here, or press to choose one" },
    icon("upload"), h("p", {}, "Drop an image here, paste it, or click to choose one"));
  const picture = h("div", { class: "card" });
  const details = h("div", { class: "card stack" });
  panel.append(input, drop, h("div", { class: "info-layout" }, picture, details));
  picture.hidden = details.hidden = true;
  let dataURL = null; // the picture shown, for the tagger
  const tagsBox = h("textarea", { name: "tags", rows: 3, spellcheck: "false", "data-persist": "no" });
  const describe = describeButton({ image: () => dataURL, prompt: { textarea: tagsBox }, what: "the Tags box" });
  const tags = h("section", { class: "stack", "aria-label": "Tags" }, h("h2", {}, "Tags"), describe.element,
    field("Tags (copy them into a prompt)", tagsBox));

  pickerButton(drop, input, read);
  panel.addEventListener("paste", (e) => {
    const file = pastedImage(e);
    if (file) read(file);
  });

  let url = null;
  async function read(file) {
    if (!(await readableImage(file))) { toast(`${file.name}: ${NOT_AN_IMAGE}`, "error"); return; }
    let info, image;
    try {
      image = await fileToDataURL(file);
      info = await api.post("/opensd/v1/image-info", { image });
    } catch (e) { toast(e.message, "error"); return; }
    dataURL = image;
    tagsBox.value = "";
    describe.reset();
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(file);
    clear(picture, h("img", { src: url, alt: file.name, class: "full" }), h("p", { class: "muted" }, file.name));
    const comfy = Object.entries(info.items);
    clear(details,
      h("div", { class: "toolbar" },
        h("button", { type: "button", class: "primary", disabled: !info.request,
          onclick: () => sendTo("generate", { params: info.request, notes: info.notes }) }, icon("send"), "Send to Generate")),
      info.infotext ? [h("h2", {}, "Parameters"), paramsTable(info.parameters),
        info.notes.map((n) => h("p", { class: "muted" }, n)),
        h("pre", { class: "infotext", "aria-label": "Parameters text" }, info.infotext)]
        : h("p", { class: "muted" }, "This image carries no A1111 parameters."),
      comfy.map(([key, value]) => h("details", { class: "card" }, h("summary", {}, key === "workflow" ? "ComfyUI workflow" : key === "prompt" ? "ComfyUI prompt (API graph)" : key),
        h("pre", { class: "infotext" }, pretty(value)))), tags);
    picture.hidden = details.hidden = false;
  }
}
