// The Train tab's dataset editor: pick or create a dataset (/opensd/v1/datasets), add images by file
// picker or drop (multipart upload, several at once), edit each image's caption (saved as the
// kohya .txt beside it when the box loses focus), remove images.
import { api, ApiError } from "./api.js";
import { clear, confirmDialog, field, h, icon, toast } from "./dom.js";
import { setOptions } from "./form.js";

const BASE = "/opensd/v1/datasets";
const path = (...parts) => [BASE, ...parts.map(encodeURIComponent)].join("/");

// multipart POST (api.js speaks JSON only); errors as ApiError with the server's one line
async function upload(url, files) {
  const body = new FormData();
  for (const f of files) body.append("files", f, f.name);
  let response;
  try {
    response = await fetch(url, { method: "POST", body, credentials: "same-origin", headers: { Accept: "application/json" } });
  } catch { throw new ApiError(0, "the server cannot be reached"); }
  if (response.status === 401) location.assign("/login");
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data?.detail || data?.message || `HTTP ${response.status}`);
  return data;
}

// Returns {element, name(), count()}; `onChange()` is called when the dataset or its images change.
export function datasetEditor(onChange) {
  const choice = h("select", { name: "dataset" });
  const newName = h("input", { name: "new_dataset", placeholder: "my subject", maxlength: 120, autocomplete: "off" });
  const files = h("input", { type: "file", accept: "image/*", multiple: true, name: "images", "aria-label": "Add images" });
  const drop = h("label", { class: "drop small-drop" }, icon("upload"), h("span", {}, "Drop images here or choose files"), files);
  const grid = h("div", { class: "dataset-grid", "aria-label": "Images and captions", role: "list" });
  const summary = h("span", { class: "muted", role: "status" });
  const remove = h("button", { type: "button", class: "danger", onclick: removeDataset }, icon("trash"), "Delete dataset");
  let images = [];

  const element = h("section", { class: "card stack", "aria-label": "Dataset" },
    h("h2", {}, "Dataset ", summary),
    h("div", { class: "row" }, field("Dataset", choice), remove),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); create(); } },
      field("New dataset", newName), h("button", { type: "submit" }, "Create")),
    drop, grid);

  async function names(selected) {
    const list = (await api.get(BASE)).items;
    setOptions(choice, list.map((d) => [d.name, `${d.name} (${d.images})`]), selected ?? choice.value);
    remove.disabled = !list.length;
    await show();
  }

  async function show() {
    if (!choice.value) { images = []; clear(grid, h("p", { class: "muted" }, "Create a dataset, then add images.")); summary.textContent = ""; onChange(); return; }
    try {
      images = (await api.get(path(choice.value))).images;
    } catch (e) { toast(e.message, "error"); images = []; }
    summary.textContent = `(${images.length} image${images.length === 1 ? "" : "s"})`;
    clear(grid, images.length ? images.map(card) : h("p", { class: "muted" }, "No images yet: add a few (3 to 20 is typical)."));
    onChange();
  }

  function card(img) {
    const caption = h("textarea", { rows: 2, maxlength: 2000, "aria-label": `Caption of ${img.file}`, "data-file": img.file,
      placeholder: "caption (optional)" }, img.caption);
    caption.value = img.caption;
    caption.addEventListener("change", async () => {
      try {
        const saved = await api.put(path(choice.value, "images", img.file, "caption"), { caption: caption.value });
        caption.value = img.caption = saved.caption;
        caption.classList.add("saved");
        setTimeout(() => caption.classList.remove("saved"), 800);
      } catch (e) { toast(e.message, "error"); }
    });
    return h("figure", { role: "listitem", "data-file": img.file },
      h("img", { src: img.url, alt: img.file, loading: "lazy", class: Math.max(img.width, img.height) <= 128 ? "pixel" : null }),
      h("figcaption", {}, h("span", { class: "muted small" }, `${img.file} · ${img.width}×${img.height}`), caption,
        h("button", { type: "button", class: "danger small", "aria-label": `Remove ${img.file}`, onclick: () => removeImage(img) },
          icon("trash"))));
  }

  async function create() {
    if (!newName.value.trim()) { toast("Type a name for the new dataset first.", "error"); newName.focus(); return; }
    try {
      const made = await api.post(BASE, { name: newName.value.trim() });
      newName.value = "";
      await names(made.name);
    } catch (e) { toast(e.message, "error"); }
  }

  async function add(list) {
    if (!list.length) return;
    if (!choice.value) { toast("Create a dataset first", "error"); return; }
    try {
      const answer = await upload(path(choice.value, "images"), list);
      toast(`Added ${answer.added.length} image${answer.added.length === 1 ? "" : "s"}`);
      await names(choice.value);
    } catch (e) { toast(e.message, "error"); }
  }

  async function removeImage(img) {
    try {
      await api.del(path(choice.value, "images", img.file));
      await names(choice.value);
    } catch (e) { toast(e.message, "error"); }
  }

  async function removeDataset() {
    if (!choice.value || !(await confirmDialog(`Delete the dataset "${choice.value}" with its images and captions?`))) return;
    try {
      await api.del(path(choice.value));
      await names("");
    } catch (e) { toast(e.message, "error"); }
  }

  files.addEventListener("change", () => { add([...files.files]); files.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    add([...(e.dataTransfer?.files || [])].filter((f) => f.type.startsWith("image/")));
  });
  choice.addEventListener("change", show);

  return { element, load: () => names(), name: () => choice.value, count: () => images.length,
    firstCaption: () => images.find((i) => i.caption)?.caption || "" };
}
