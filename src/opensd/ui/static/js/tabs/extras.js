// Extras (A1111's extras tab: upscaling). An image (upload, drop, paste, or "send to Extras" from a
// result or the gallery); upscaler 1, and upscaler 2 blended in at its visibility (GET
// /sdapi/v1/upscalers); scale by a factor or to a size (cropped to it, or not). It runs through
// POST /sdapi/v1/extra-single-image, a job on the shared queue (the request answers once it has run);
// the result can be downloaded or sent to img2img, Inpaint or ControlNet.
import { api, fileToDataURL } from "../api.js";
import { clear, field, h, icon, toast } from "../dom.js";
import { checkForm, number, select, slider, syncSliders } from "../form.js";
import { filePicker, NOT_AN_IMAGE, pastedImage, pickerButton, readableImage } from "../image_input.js";
import { keepForm, loadForm } from "../persist.js";
import { EVENTS, on, sendTo, take, TARGETS } from "../shared.js";

const KEY = "opensd.extras";
const MODES = [["0", "Scale by"], ["1", "Scale to"]];

export async function mount(panel) {
  const upscalers = await api.get("/sdapi/v1/upscalers").catch((e) => { toast(e.message, "error"); return []; });
  const names = upscalers.map((u) => [u.name, u.name]);
  const picker = filePicker("Choose an image to upscale", load);
  const drop = h("div", { class: "drop extras-drop", role: "button", tabindex: "0",
    "aria-label": "Image to upscale: drop, paste or press to choose one" });
  const mode = select("resize_mode", MODES, "0");
  const by = slider("Resize", "upscaling_resize", { min: 1, max: 8, step: 0.05, value: 2 });
  const to = h("div", { class: "grid2" },
    field("Width", number("upscaling_resize_w", { min: 1, max: 8192, step: 1, value: 512 })),
    field("Height", number("upscaling_resize_h", { min: 1, max: 8192, step: 1, value: 512 })),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "upscaling_crop", checked: true }), "Crop to fit"));
  const run = h("button", { type: "submit", class: "primary" }, icon("expand"), "Upscale");
  const form = h("form", { class: "gen-side", "aria-label": "Upscale settings" },
    h("div", { class: "card stack" }, drop, picker),
    h("div", { class: "card stack" },
      field("Resize mode", mode), by, to,
      h("div", { class: "grid2" }, field("Upscaler 1", select("upscaler_1", names, "Lanczos")),
        field("Upscaler 2", select("upscaler_2", names, "None"))),
      slider("Upscaler 2 visibility", "extras_upscaler_2_visibility", { min: 0, max: 1, step: 0.01, value: 0 })),
    h("div", { class: "gen-actions" }, run));
  const status = h("p", { class: "muted", role: "status" }, "Choose an image, then Upscale.");
  const result = h("div", { class: "result-main" });
  const actions = h("div", { class: "toolbar", hidden: true });
  panel.append(h("div", { class: "gen-layout" }, form,
    h("div", { class: "gen-side" }, h("div", { class: "card stack", "aria-label": "Result" },
      h("h2", {}, "Result"), status, result, actions))));

  loadForm(form, KEY);
  syncSliders(form);
  const v = form.elements;
  const showMode = () => { by.hidden = v.resize_mode.value !== "0"; to.hidden = v.resize_mode.value !== "1"; };
  showMode();
  keepForm(form, KEY);
  form.addEventListener("change", showMode);
  form.noValidate = true; // upscale() checks it (checkForm), the hidden "Scale to" fields too
  form.addEventListener("submit", (e) => { e.preventDefault(); upscale(); });
  pickerButton(drop, picker, load);
  panel.addEventListener("paste", (e) => {
    const file = pastedImage(e);
    if (file) { e.preventDefault(); load(file); }
  });

  let source = null; // {blob, name, url}
  let made = null;   // {blob, url, name}
  async function load(blob, name = blob.name || "image.png") {
    if (!(await readableImage(blob))) { toast(`${name}: ${NOT_AN_IMAGE}`, "error"); return; }
    if (source) URL.revokeObjectURL(source.url);
    source = { blob, name, url: URL.createObjectURL(blob) };
    const caption = h("p", { class: "muted" }, name);
    const img = h("img", { src: source.url, alt: `Image to upscale: ${name}`, class: "full" });
    img.addEventListener("load", () => {
      caption.textContent = `${name} · ${img.naturalWidth}×${img.naturalHeight}`;
      img.classList.toggle("pixel", img.naturalWidth <= 128); // small images stay crisp when shown larger
    });
    clear(drop, img, caption);
  }
  clear(drop, icon("upload"), h("p", {}, "Drop an image here, paste it, or click to choose one"));

  async function upscale() {
    if (!checkForm(form)) return;
    if (!source) { toast("Choose an image to upscale first (drop, paste or click the box).", "error"); return; }
    const int = (name) => Math.trunc(Number(v[name].value));
    const body = {
      image: await fileToDataURL(source.blob), resize_mode: Number(v.resize_mode.value),
      upscaling_resize: Number(v.upscaling_resize.value), upscaling_resize_w: int("upscaling_resize_w"),
      upscaling_resize_h: int("upscaling_resize_h"), upscaling_crop: v.upscaling_crop.checked,
      upscaler_1: v.upscaler_1.value, upscaler_2: v.upscaler_2.value,
      extras_upscaler_2_visibility: Number(v.extras_upscaler_2_visibility.value),
    };
    run.disabled = true;
    status.textContent = "Upscaling (a job on the queue)…";
    try {
      const answer = await api.post("/sdapi/v1/extra-single-image", body);
      // decoded here: the page's CSP lets fetch() reach this server only, not data: URLs
      show(new Blob([Uint8Array.from(atob(answer.image), (c) => c.charCodeAt(0))], { type: "image/png" }));
      for (const warning of answer.opensd_warnings || []) toast(warning);
    } catch (e) {
      status.textContent = "Failed.";
      toast(e.message, "error");
    } finally {
      run.disabled = false;
    }
  }

  function show(blob) {
    if (made) URL.revokeObjectURL(made.url);
    made = { blob, url: URL.createObjectURL(blob), name: `${source.name.replace(/\.[^.]+$/, "")}-upscaled.png` };
    const img = h("img", { src: made.url, alt: "Upscaled image", class: "full" });
    img.addEventListener("load", () => {
      status.textContent = `Done: ${img.naturalWidth}×${img.naturalHeight}`;
      img.classList.toggle("pixel", img.naturalWidth <= 256);
    });
    clear(result, img);
    clear(actions,
      h("a", { class: "button", href: made.url, download: made.name }, icon("download"), "Download"),
      Object.entries(TARGETS).filter(([id]) => id !== "generate" && id !== "extras").map(([id, label]) =>
        h("button", { type: "button", onclick: () => sendTo(id, { image: made.blob, name: made.name, params: null, infotext: "" }) },
          icon("send"), `Send to ${label}`)));
    actions.hidden = false;
  }

  function receive() {
    const sent = take("extras");
    if (sent?.image) load(sent.image, sent.name || "image.png");
  }
  on(EVENTS.SEND, ({ target }) => { if (target === "extras") receive(); });
  receive();
}
