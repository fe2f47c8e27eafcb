// Getting an image file in: a hidden file picker, a drop target (highlighted while a file is over it),
// an element that opens the picker on click, Enter or Space, and the image of a paste event.
import { h } from "./dom.js";

export function filePicker(label, onFile, accept = "image/*") {
  const input = h("input", { type: "file", accept, hidden: true, "aria-label": label });
  input.addEventListener("change", () => { if (input.files[0]) onFile(input.files[0]); input.value = ""; });
  return input;
}

export function dropTarget(el, onFile) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault();
    el.classList.remove("over");
    const file = e.dataTransfer?.files?.[0];
    if (file) onFile(file);
  });
}

// `el` (role=button) opens `picker` and takes dropped files.
export function pickerButton(el, picker, onFile) {
  el.addEventListener("click", () => picker.click());
  el.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); picker.click(); } });
  dropTarget(el, onFile);
}

export function pastedImage(e) {
  return [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/")) || null;
}

export const NOT_AN_IMAGE = "This file is not an image the browser can read.";

// Whether the browser can decode `blob` as a picture (a renamed text file or a cut-off download
// cannot): checked before a file is taken, so it is refused with a message, not shown broken.
export async function readableImage(blob) {
  try { (await createImageBitmap(blob)).close(); return true; } catch { return false; }
}
