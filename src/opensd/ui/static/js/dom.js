// Building DOM without HTML strings: every string becomes a text node, so user text (prompts,
// file names, server messages) is shown as text and never parsed as markup.

const PROPS = new Set(["value", "checked", "disabled", "hidden", "selected", "open", "multiple"]);

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (PROPS.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// Inline SVG icons (stroke paths on a 24x24 grid), so nothing is fetched.
const ICONS = {
  sparkle: "M12 3v4M12 17v4M3 12h4M17 12h4M6 6l2.5 2.5M15.5 15.5L18 18M6 18l2.5-2.5M15.5 8.5L18 6",
  grid: "M4 4h7v7H4zM13 4h7v7h-7zM4 13h7v7H4zM13 13h7v7h-7z",
  list: "M8 6h12M8 12h12M8 18h12M4 6h.01M4 12h.01M4 18h.01",
  info: "M12 8h.01M11 12h1v5h1M12 3a9 9 0 1 0 0 18a9 9 0 0 0 0-18",
  sun: "M12 7a5 5 0 1 0 0 10a5 5 0 0 0 0-10M12 1v2M12 21v2M4.2 4.2l1.4 1.4M18.4 18.4l1.4 1.4M1 12h2M21 12h2M4.2 19.8l1.4-1.4M18.4 5.6l1.4-1.4",
  moon: "M21 12.8A9 9 0 1 1 11.2 3a7 7 0 0 0 9.8 9.8z",
  dice: "M4 4h16v16H4zM8.5 8.5h.01M15.5 15.5h.01M15.5 8.5h.01M8.5 15.5h.01M12 12h.01",
  recycle: "M3 12a9 9 0 0 1 15-6.7L21 8M21 3v5h-5M21 12a9 9 0 0 1-15 6.7L3 16M3 21v-5h5",
  stop: "M6 6h12v12H6z",
  skip: "M5 5l10 7-10 7zM19 5v14",
  trash: "M3 6h18M8 6V4h8v2M6 6l1 14h10l1-14",
  download: "M12 3v12M7 10l5 5 5-5M4 21h16",
  close: "M6 6l12 12M18 6L6 18",
  swap: "M7 4v16M7 4L3 8M7 4l4 4M17 20V4M17 20l-4-4M17 20l4-4",
  send: "M4 12h14M13 6l6 6-6 6",
  upload: "M12 21V9M7 14l5-5 5 5M4 3h16",
  search: "M11 4a7 7 0 1 0 0 14a7 7 0 0 0 0-14M21 21l-5-5",
  box: "M12 3l8 4.5v9L12 21l-8-4.5v-9zM4 7.5l8 4.5 8-4.5M12 12v9",
  chart: "M4 4v16h16M7 15l4-5 3 3 5-7",
  undo: "M9 14L4 9l5-5M4 9h11a5 5 0 0 1 0 10h-3",
  redo: "M15 14l5-5-5-5M20 9H9a5 5 0 0 0 0 10h3",
  brush: "M20 3l1 1-9 10-2-2zM9 13c-3 0-5 2-5 5 0 1-1 2-2 2.5 4 1 9 0 9-5.5",
  eraser: "M15 4l5 5-10 10H6l-3-3zM9 10l5 5M11 20h9",
  hand: "M8 12V5a1.5 1.5 0 0 1 3 0v6M11 11V3.5a1.5 1.5 0 0 1 3 0V11M14 11V5a1.5 1.5 0 0 1 3 0v6M17 11V8.5a1.5 1.5 0 0 1 3 0V14a7 7 0 0 1-7 7h-1a7 7 0 0 1-6-3.4L3.4 14.5a1.5 1.5 0 0 1 2.4-1.8L8 15",
  plus: "M12 5v14M5 12h14",
  minus: "M5 12h14",
  layers: "M12 3l9 5-9 5-9-5zM3 13l9 5 9-5",
  image: "M4 4h16v16H4zM4 16l5-5 4 4 3-3 4 4M15 8.5h.01",
  expand: "M14 4h6v6M20 4l-7 7M10 20H4v-6M4 20l7-7",
  sliders: "M4 6h9M17 6h3M4 12h3M11 12h9M4 18h11M19 18h1M15 4v4M9 10v4M17 16v4",
};

export function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICONS[name] || ICONS.info);
  svg.append(path);
  return svg;
}

// A short message at the bottom right. Errors stay until dismissed (a user who looked away still
// reads why nothing happened); others go after `ms`. At most the newest MAX_TOASTS are kept.
const MAX_TOASTS = 4;
export function toast(message, kind = "info", ms = 5000) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = h("div", { class: `toast ${kind}` }, h("span", {}, message));
  if (kind === "error") {
    el.setAttribute("role", "alert");
    el.append(h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", title: "Dismiss",
      onclick: () => el.remove() }, icon("close")));
  } else {
    setTimeout(() => el.remove(), ms);
  }
  box.append(el);
  while (box.children.length > MAX_TOASTS) box.firstElementChild.remove();
}

// A modal yes/no question; resolves true when confirmed (Cancel has the focus).
export function confirmDialog(question, yes = "Delete") {
  return new Promise((resolve) => {
    const dlg = h("dialog", { class: "small", "aria-label": "Confirm" },
      h("div", { class: "confirm-body" },
        h("p", {}, question),
        h("div", { class: "toolbar" },
          h("button", { type: "button", class: "danger", "data-answer": "yes", onclick: () => done(true) }, yes),
          // the safe answer has the focus: Enter or Space pressed at once deletes nothing
          h("button", { type: "button", autofocus: true, onclick: () => done(false) }, "Cancel"))));
    function done(answer) { dlg.close(); dlg.remove(); resolve(answer); }
    dlg.addEventListener("cancel", () => done(false));
    document.body.append(dlg);
    dlg.showModal();
  });
}

let uid = 0;
export const nextId = (prefix) => `${prefix}-${++uid}`;

// A labelled control: <div class=field><label for=id>text</label>control</div>.
export function field(label, control) {
  if (!control.id) control.id = nextId("f");
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// Generation parameters as a two-column table (the "Size-1"/"Size-2" split copies left out).
export function paramsTable(params) {
  return h("table", { class: "params" }, h("tbody", {},
    Object.entries(params).filter(([k]) => !/-[12]$/.test(k))
      .map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))));
}
