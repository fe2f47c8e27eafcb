// PNG info: drop, paste or pick any image (ours, A1111's PNG/JPEG/WebP, ComfyUI's with its embedded
// prompt and workflow); the server reads it (POST /opensd/v1/image-info); one click sends the
// parameters to Generate.
import { api, fileToDataURL } from "../api.js";
import { clear, h, icon, paramsTable, toast } from "../dom.js";
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

  pickerButton(drop, input, read);
  panel.addEventListener("paste", (e) => {
    const file = pastedImage(e);
    if (file) read(file);
  });

  let url = null;
  async function read(file) {
    if (!(await readableImage(file))) { toast(`${file.name}: ${NOT_AN_IMAGE}`, "error"); return; }
    let info;
    try {
      info = await api.post("/opensd/v1/image-info", { image: await fileToDataURL(file) });
    } catch (e) { toast(e.message, "error"); return; }
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
        h("pre", { class: "infotext" }, pretty(value)))));
    picture.hidden = details.hidden = false;
  }
}
