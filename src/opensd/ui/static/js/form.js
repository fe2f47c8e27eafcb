// Form controls the settings forms share: numbers, range+number sliders and selects.
import { clear, field, h, toast } from "./dom.js";

// Required unless said otherwise: a cleared number is refused at its field (checkForm, or the browser's
// own check), not sent as 0 (Number("")).
export function number(name, { min, max, step = 1, value, required = true }) {
  return h("input", { type: "number", name, min, max, step, value, required, inputmode: step < 1 ? "decimal" : "numeric" });
}

// A range and a number input kept equal; only the number has a name (submitted and remembered).
export function slider(label, name, opts) {
  const num = number(name, opts);
  const range = h("input", { type: "range", min: opts.min, max: opts.max, step: opts.step ?? 1, value: opts.value,
    tabindex: "-1", "aria-hidden": "true", "data-persist": "no" });
  range.addEventListener("input", () => { num.value = range.value; num.dispatchEvent(new Event("input", { bubbles: true })); });
  num.addEventListener("input", () => { range.value = num.value; });
  const f = field(label, num);
  f.replaceChildren(f.firstChild, h("div", { class: "slider" }, range, num));
  return f;
}

// After values are set from code: move each slider's range to its number.
export function syncSliders(root) {
  root.querySelectorAll("input[type=range]").forEach((r) => r.nextSibling?.dispatchEvent(new Event("input")));
}

export function select(name, options, value) {
  const el = h("select", { name });
  setOptions(el, options, value);
  return el;
}

export function setOptions(el, options, value) {
  clear(el, options.map(([v, text]) => h("option", { value: v }, text)));
  if (value !== undefined && options.some(([v]) => v === value)) el.value = value;
}

// Choose the option whose value or text equals `wanted` (case-insensitive); false if none does.
export function choose(el, wanted) {
  const w = String(wanted).toLowerCase();
  const hit = [...el.options].find((o) => o.value.toLowerCase() === w || o.text.toLowerCase() === w);
  if (hit) el.value = hit.value;
  return Boolean(hit);
}

// A multiple choice as toggle buttons, kept in picking order in a hidden input (JSON) so that the form
// remembers it. `onChange(values)` runs after every render; `title(choice)` gives a button's tooltip.
export function chips(name, label, { onChange = () => {}, title = () => null } = {}) {
  const store = h("input", { type: "hidden", name });
  const list = h("div", { class: "picker-list", role: "group", "aria-label": label });
  let choices = [];
  function get() {
    let values = [];
    try { values = JSON.parse(store.value || "[]"); } catch { values = []; }
    return Array.isArray(values) ? values.filter((v) => choices.includes(v)) : [];
  }
  function render() {
    const now = get();
    clear(list, choices.map((c) => h("button", { type: "button", "aria-pressed": String(now.includes(c)), title: title(c),
      onclick: () => set(now.includes(c) ? now.filter((v) => v !== c) : [...now, c]) }, c)));
    onChange(now);
  }
  function set(values) {
    store.value = JSON.stringify(values.filter((v) => choices.includes(v)));
    render();
    store.dispatchEvent(new Event("input", { bubbles: true }));
  }
  return { element: h("div", {}, list, store), get, set, render, setChoices(values) { choices = values; render(); } };
}

// Marks a part of a form whose fields are not sent now (the hires card while the fix is off): its
// controls, empty or out of range, do not stop the form (checkForm skips them).
export const UNSENT = "data-unsent";

// Whether `form` may be sent; if not, its first invalid control is opened up and pointed at with the
// browser's message. Forms using this set noValidate: the browser's own check cannot point at a
// control in a collapsed card (<details>) or a hidden section, so the button did nothing at all.
export function checkForm(form) {
  const bad = [...form.querySelectorAll("input:invalid, select:invalid, textarea:invalid")]
    .find((el) => !el.closest(`[${UNSENT}]`));
  if (!bad) return true;
  for (let d = bad.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
  if (bad.getClientRects().length) return form.reportValidity();
  const label = bad.labels?.[0]?.textContent || bad.getAttribute("aria-label") || bad.name;
  toast(`${label}: ${bad.validationMessage}`, "error");
  return false;
}
