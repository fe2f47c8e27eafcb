// Getting an image file in: a hidden file picker, a drop target (highlighted while a file is over it),
// an element that opens the picker on click, Enter or Space, and the image of a paste event.
import { h } from "./dom.js";

// `multiple`: every chosen (dropped) file is given to onFile in turn, else the first only.
export function filePicker(label, onFile, accept = "image/*", { multiple = false } = {}) {
  const input = h("input", { type: "file", accept, hidden: true, multiple, "aria-label": label });
  input.addEventListener("change", () => { taken([...input.files], multiple).forEach((f) => onFile(f)); input.value = ""; });
  return input;
}

const taken = (files, multiple) => (multiple ? files : files.slice(0, 1));

export function dropTarget(el, onFile, { multiple = false } = {}) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault();
    el.classList.remove("over");
    taken([...(e.dataTransfer?.files || [])], multiple).forEach((f) => onFile(f));
  });
}

// `el` (role=button) opens `picker` and takes dropped files.
export function pickerButton(el, picker, onFile, opts = {}) {
  el.addEventListener("click", () => picker.click());
  el.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); picker.click(); } });
  dropTarget(el, onFile, opts);
}

export function pastedImage(e) {
  return [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/")) || null;
}

export const NOT_AN_IMAGE = "This file is not an image the browser can read.";

// Whether the browser can decode `blob` as a picture (a renamed text file or a cut-off download
// cannot): checked before a file is taken, so it is refused with a message, not shown broken.
export async function readableImage(blob) {
  return Boolean(await imageSize(blob));
}

// {width, height} of a picture the browser can decode, else null.
export async function imageSize(blob) {
  try {
    const bitmap = await createImageBitmap(blob);
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return size;
  } catch { return null; }
}
