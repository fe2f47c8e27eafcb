// Form values kept between visits (localStorage), by control name.
import { debounce } from "./dom.js";

export function saveForm(form, key) {
  const data = {};
  for (const el of form.elements) {
    if (!el.name || el.dataset.persist === "no") continue;
    data[el.name] = el.type === "checkbox" ? el.checked : el.value;
  }
  localStorage.setItem(key, JSON.stringify(data));
}

export function loadForm(form, key) {
  let data = {};
  try { data = JSON.parse(localStorage.getItem(key) || "{}") || {}; } catch { data = {}; }
  for (const el of form.elements) {
    if (!el.name || !(el.name in data) || el.dataset.persist === "no") continue;
    if (el.type === "checkbox") el.checked = Boolean(data[el.name]);
    else if (el.tagName === "SELECT" && ![...el.options].some((o) => o.value === data[el.name])) continue;
    else el.value = data[el.name];
  }
  return data;
}

// Save `form` a moment after each edit (typing stays quick) and at once when the page is left, so a
// reload right after typing keeps the text.
export function keepForm(form, key) {
  form.addEventListener("input", debounce(() => saveForm(form, key), 300));
  form.addEventListener("change", () => saveForm(form, key));
  addEventListener("pagehide", () => saveForm(form, key));
}
