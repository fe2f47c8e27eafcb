// The inpaint mask without a mouse or touch screen. On the focused canvas the arrow keys move a brush
// cursor (Shift: a brush width at a time) and Space or Enter, held, paints along its path with the
// current tool (the Eraser erases; E and B choose it); a status line says where the brush is. "Mask a
// rectangle" paints or erases a rectangle given in the image's pixels. The editor (canvas_editor.js)
// hands over its painting: `painter` has image() ({width, height} or null), brush() (its size),
// begin() and end() around a change (undo), line(from, to, width), rect(x, y, w, h, erase),
// toView(point) (image pixels to the view's) and setTool(name).
import { field, h, nextId } from "./dom.js";

const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
const HELP = "Keyboard: Tab to the canvas; the arrow keys move the brush (with Shift: faster); hold Space or "
  + "Enter to paint; E: eraser, B: brush; [ and ]: brush size; Ctrl+Z: undo.";

export function maskKeys(view, painter) {
  const cursor = h("div", { class: "canvas-cursor canvas-key-cursor", hidden: true });
  const status = h("p", { class: "muted canvas-key-status", role: "status" });
  const help = h("p", { class: "muted canvas-help", id: nextId("canvas-help") }, HELP);
  view.append(cursor);
  view.setAttribute("aria-describedby", help.id);
  let at = null;        // the brush cursor, in image pixels
  let painting = null;  // the key held down to paint, and where the stroke was last
  let shown = false;    // the keyboard is in use (a pointer over the canvas hides the cursor again)

  function place() {
    cursor.hidden = !(shown && at && painter.image());
    if (cursor.hidden) return;
    const p = painter.toView(at), d = painter.brush() * p.zoom;
    Object.assign(cursor.style, { width: `${d}px`, height: `${d}px`, transform: `translate(${p.x - d / 2}px, ${p.y - d / 2}px)` });
  }
  function say() {
    status.textContent = at ? `Brush at x ${Math.round(at.x)}, y ${Math.round(at.y)}, size ${painter.brush()}`
      + `${painting ? ", painting" : ""}` : "";
  }
  function start() {
    if (!shown) { shown = true; say(); }
    place();
  }

  // True when the key was the keyboard brush's (the editor then leaves it alone).
  function keydown(e) {
    const image = painter.image();
    if (!image || e.ctrlKey || e.metaKey || e.altKey) return false;
    const arrow = ARROWS[e.key];
    if (arrow) {
      e.preventDefault();
      const step = e.shiftKey ? painter.brush() : Math.max(1, Math.round(painter.brush() / 4));
      const next = { x: Math.min(image.width, Math.max(0, at.x + arrow[0] * step)),
        y: Math.min(image.height, Math.max(0, at.y + arrow[1] * step)) };
      if (painting) { painter.line(painting.last, next, painter.brush()); painting.last = next; }
      at = next;
      start();
      say();
      return true;
    }
    if ((e.key === " " || e.key === "Enter") && shown) { // Space over a pointer still pans
      e.preventDefault();
      if (!painting && !e.repeat) {
        painter.begin();
        painting = { key: e.key, last: at };
        painter.line(at, at, painter.brush());
        say();
      }
      return true;
    }
    const key = e.key.toLowerCase();
    if (key === "e" || key === "b") { painter.setTool(key === "e" ? "eraser" : "brush"); return true; }
    return false;
  }
  function stop() {
    if (!painting) return;
    painting = null;
    painter.end();
    say();
  }
  view.addEventListener("keyup", (e) => { if (painting && e.key === painting.key) stop(); });
  view.addEventListener("blur", () => { stop(); cursor.hidden = true; });
  view.addEventListener("focus", () => { if (view.matches(":focus-visible")) start(); });
  view.addEventListener("pointermove", (e) => { if (e.pointerType !== "touch" || shown) { shown = false; place(); } });

  // --- a rectangle by numbers ---
  const boxes = ["X (from the left)", "Y (from the top)", "Width", "Height"].map((label) =>
    [label, h("input", { type: "number", min: 0, step: 1, inputmode: "numeric", "data-persist": "no" })]);
  const [x, y, w, hh] = boxes.map(([, el]) => el);
  const problem = h("p", { class: "error", role: "alert", hidden: true, id: nextId("rect-error") });
  for (const [, el] of boxes) el.addEventListener("input", () => { problem.hidden = true; el.removeAttribute("aria-invalid"); });
  function refuse(el, message) {
    el.setAttribute("aria-invalid", "true");
    el.setAttribute("aria-describedby", problem.id);
    problem.textContent = message;
    problem.hidden = false;
    el.focus();
  }
  function rect(erase) {
    const image = painter.image();
    if (!image) { refuse(x, "Load an image first: the rectangle is in its pixels."); return; }
    const [X, Y, W, H] = [x, y, w, hh].map((el) => (el.value.trim() === "" ? NaN : Number(el.value)));
    const checks = [[x, X, 0, image.width - 1, "X"], [y, Y, 0, image.height - 1, "Y"],
      [w, W, 1, image.width - (X || 0), "Width"], [hh, H, 1, image.height - (Y || 0), "Height"]];
    for (const [el, v, lo, hi, name] of checks) {
      if (!Number.isInteger(v) || v < lo || v > hi) {
        refuse(el, `${name}: give a whole number from ${lo} to ${hi} (the image is ${image.width} × ${image.height} pixels).`);
        return;
      }
    }
    painter.begin();
    painter.rect(X, Y, W, H, erase);
    painter.end();
    status.textContent = `${erase ? "Erased" : "Masked"} ${W} × ${H} pixels at x ${X}, y ${Y}`;
  }
  const rectCard = h("details", { class: "mask-rect" }, h("summary", {}, "Mask a rectangle (by numbers)"),
    h("div", { class: "stack" },
      h("div", { class: "grid2" }, boxes.map(([label, el]) => field(label, el))), problem,
      h("div", { class: "toolbar" },
        h("button", { type: "button", onclick: () => rect(false) }, "Mask the rectangle"),
        h("button", { type: "button", onclick: () => rect(true) }, "Erase the rectangle"))));

  return {
    element: h("div", { class: "stack canvas-keys" }, status, help, rectCard),
    keydown,
    place,
    // a new image size: the brush to its middle, the rectangle to its middle half
    resized(width, height) {
      at = { x: Math.round(width / 2), y: Math.round(height / 2) };
      [x.value, y.value, w.value, hh.value] = [width / 4, height / 4, width / 2, height / 2].map(Math.round);
      if (shown) say();
      place();
    },
  };
}
