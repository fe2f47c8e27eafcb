// The img2img/inpaint canvas: an image (uploaded, pasted, dropped or sent from another tab) with a
// mask painted over it. Brush and eraser work with mouse, pen (pressure scales the brush) and touch
// through Pointer Events; two fingers, the middle button, Space+drag or the hand tool pan; Ctrl+wheel,
// a pinch or the +/- buttons zoom; the keyboard alone can mask too (mask_keys.js). Every change of image or mask is undoable. The mask is kept at the
// image's own resolution and exported white (repaint) on black, as A1111's `mask` field takes it.
import { field, h, icon, toast } from "./dom.js";
import { history } from "./canvas_history.js";
import { dropTarget, filePicker, NOT_AN_IMAGE } from "./image_input.js";
import { maskKeys } from "./mask_keys.js";

const MASK_COLOUR = "#ff2d95"; // shown at 55% opacity, visible on light and dark images
const SEAM = 8; // outpainting also repaints this many pixels of the old image, so the seam blends in
const MIN_ZOOM = 0.05;
const MAX_ZOOM = 32;

function canvas(width, height) {
  const c = document.createElement("canvas");
  c.width = width;
  c.height = height;
  return c;
}

function copy(source) {
  const c = canvas(source.width, source.height);
  c.getContext("2d").drawImage(source, 0, 0);
  return c;
}

// `masking`: show the mask tools (inpaint); without it the canvas only shows, zooms and pans the image.
// `onImage(width, height)`: called when a new image arrives or the canvas changes size.
export function canvasEditor({ masking, label, onImage = () => {} }) {
  const imageLayer = canvas(1, 1);
  const maskLayer = canvas(1, 1);
  const ctx = maskLayer.getContext("2d");
  imageLayer.className = "canvas-image";
  maskLayer.className = "canvas-mask";
  maskLayer.hidden = !masking;
  const stage = h("div", { class: "canvas-stage" }, imageLayer, maskLayer);
  const cursor = h("div", { class: "canvas-cursor", hidden: true });
  const empty = h("p", { class: "canvas-empty muted" }, "Drop an image here, paste it, or click here (or press Enter) to choose one");
  // masking, the canvas takes keys of its own (a screen reader passes them on to an "application")
  // empty, a click, Enter or Space opens the file picker (the label says so until an image is in)
  const view = h("div", { class: "canvas-view", tabindex: "0", role: masking ? "application" : "img",
    "aria-label": `${label}: empty, press Enter to choose an image` }, stage, cursor, empty);
  const fileInput = filePicker("Choose an image", (file) => load(file));
  const size = h("input", { type: "range", name: "brush_size", min: 1, max: 256, value: 16, "data-persist": "no" });
  const pressure = h("input", { type: "checkbox", name: "pen_pressure", checked: true, "data-persist": "no" });
  let tool = masking ? "brush" : "pan";
  // On a phone the labels hide (studio.css) and the icons stay, so the tools fit on one or two rows.
  const button = (text, ico, onclick, attrs = {}) => h("button", { type: "button", "aria-label": text, onclick, ...attrs },
    icon(ico), h("span", { class: "tool-label" }, text));
  const toolButtons = {};
  const toolButton = (name, text, ico) =>
    (toolButtons[name] = button(text, ico, () => setTool(name), { "aria-pressed": String(tool === name) }));
  const undoButton = button("Undo", "undo", () => undo());
  const redoButton = button("Redo", "redo", () => redo());
  const tools = h("div", { class: "toolbar canvas-tools", role: "toolbar", "aria-label": "Canvas tools" },
    button("Upload", "upload", () => fileInput.click()),
    masking ? [toolButton("brush", "Brush", "brush"), toolButton("eraser", "Eraser", "eraser")] : null,
    toolButton("pan", "Pan", "hand"),
    h("button", { type: "button", class: "icon-button", "aria-label": "Zoom out", onclick: () => zoomBy(1 / 1.25) }, icon("minus")),
    h("button", { type: "button", onclick: () => fit() }, "Fit"),
    h("button", { type: "button", class: "icon-button", "aria-label": "Zoom in", onclick: () => zoomBy(1.25) }, icon("plus")),
    masking ? [undoButton, redoButton,
      button("Clear mask", "trash", () => clearMask())] : null);
  const brushRow = masking ? h("div", { class: "row canvas-brush" }, field("Brush size", size),
    h("label", { class: "check" }, pressure, "Pen pressure")) : null;
  const keys = masking ? maskKeys(view, {
    image: () => source && { width: source.width, height: source.height },
    brush: () => Number(size.value),
    begin: () => steps.remember(snapshot()),
    end: () => buttons(),
    line: (from, to, width) => paint(from, to, width),
    rect(x, y, w, hh, erase) {
      ctx.save();
      ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
      ctx.fillStyle = MASK_COLOUR;
      ctx.fillRect(x, y, w, hh);
      ctx.restore();
    },
    toView: (p) => ({ x: panX + p.x * zoom, y: panY + p.y * zoom, zoom }),
    setTool: (name) => setTool(name),
  }) : null;
  const element = h("div", { class: "canvas-editor stack" }, tools, brushRow, view, keys?.element, fileInput);

  let source = null; // the current image: a canvas that is never drawn on (history keeps references)
  let zoom = 1, panX = 0, panY = 0;
  const steps = history(30);

  // --- view ---
  function place() {
    stage.style.transform = `translate(${panX}px, ${panY}px) scale(${zoom})`;
    stage.classList.toggle("pixelated", zoom >= 2);
    keys?.place();
  }
  function fit() {
    if (!source) return;
    const r = view.getBoundingClientRect();
    if (!r.width || !r.height) return; // a hidden tab: fitted when it is shown (ResizeObserver)
    zoom = Math.min(r.width / source.width, r.height / source.height) * 0.96;
    panX = (r.width - source.width * zoom) / 2;
    panY = (r.height - source.height * zoom) / 2;
    place();
  }
  function zoomAt(factor, x, y) { // x, y in view pixels stay where they are
    const next = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, zoom * factor));
    panX = x - (x - panX) * (next / zoom);
    panY = y - (y - panY) * (next / zoom);
    zoom = next;
    place();
  }
  function zoomBy(factor) {
    const r = view.getBoundingClientRect();
    zoomAt(factor, r.width / 2, r.height / 2);
  }
  function toImage(e) {
    const r = view.getBoundingClientRect();
    return { x: (e.clientX - r.left - panX) / zoom, y: (e.clientY - r.top - panY) / zoom };
  }
  function setTool(name) {
    tool = name;
    for (const [k, b] of Object.entries(toolButtons)) b.setAttribute("aria-pressed", String(k === name));
    view.dataset.tool = name;
  }
  view.dataset.tool = tool;

  // --- image and mask state ---
  function show(image, mask, fresh = false) {
    const resized = !source || source.width !== image.width || source.height !== image.height;
    source = image;
    for (const layer of [imageLayer, maskLayer]) { layer.width = image.width; layer.height = image.height; }
    imageLayer.getContext("2d").drawImage(image, 0, 0);
    if (mask) ctx.drawImage(mask, 0, 0);
    stage.style.width = `${image.width}px`;
    stage.style.height = `${image.height}px`;
    empty.hidden = true;
    view.setAttribute("aria-label", label);
    if (resized) { keys?.resized(image.width, image.height); fit(); }
    if (resized || fresh) onImage(image.width, image.height);
  }
  const snapshot = () => ({ source, mask: source ? copy(maskLayer) : null });
  function restore(state) {
    if (state.source) show(state.source, state.mask);
    buttons();
  }
  function undo() { if (steps.canUndo()) restore(steps.undo(snapshot())); }
  function redo() { if (steps.canRedo()) restore(steps.redo(snapshot())); }
  function buttons() {
    undoButton.disabled = !steps.canUndo();
    redoButton.disabled = !steps.canRedo();
  }
  function clearMask() {
    if (!source) return;
    steps.remember(snapshot());
    ctx.clearRect(0, 0, maskLayer.width, maskLayer.height);
    buttons();
  }

  async function load(blob) {
    let bitmap;
    try { bitmap = await createImageBitmap(blob); } catch { toast(NOT_AN_IMAGE, "error"); return false; }
    if (source) steps.remember(snapshot());
    const image = canvas(bitmap.width, bitmap.height);
    image.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    if (!source || source.width !== image.width || source.height !== image.height) {
      size.value = Math.max(1, Math.round(Math.min(image.width, image.height) / 8));
    }
    show(image, null, true);
    buttons();
    return true;
  }

  // Grow the canvas by the given pixels per side: the new border takes the colours of the image's
  // edge and becomes the mask (with a few pixels of the old image, so the seam is repainted too).
  function extend({ left = 0, right = 0, top = 0, bottom = 0 }) {
    if (!source || left + right + top + bottom <= 0) return false;
    steps.remember(snapshot());
    const w = source.width, hh = source.height, W = w + left + right, H = hh + top + bottom;
    const image = canvas(W, H);
    const c = image.getContext("2d");
    c.imageSmoothingEnabled = false;
    c.drawImage(source, left, top);
    if (left) c.drawImage(source, 0, 0, 1, hh, 0, top, left, hh);
    if (right) c.drawImage(source, w - 1, 0, 1, hh, left + w, top, right, hh);
    if (top) c.drawImage(image, 0, top, W, 1, 0, 0, W, top);
    if (bottom) c.drawImage(image, 0, top + hh - 1, W, 1, 0, top + hh, W, bottom);
    const mask = canvas(W, H);
    const m = mask.getContext("2d");
    m.fillStyle = MASK_COLOUR;
    m.fillRect(0, 0, W, H);
    const seam = (n) => (n ? SEAM : 0);
    m.clearRect(left + seam(left), top + seam(top), w - seam(left) - seam(right), hh - seam(top) - seam(bottom));
    m.drawImage(maskLayer, left, top);
    show(image, mask);
    buttons();
    return true;
  }

  function maskEmpty() {
    const data = ctx.getImageData(0, 0, maskLayer.width, maskLayer.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i]) return false;
    return true;
  }

  function toDataURL(c) { return c.toDataURL("image/png"); }

  // --- painting ---
  let stroke = null; // {last: {x, y}}
  let drag = null;   // {x, y, panX, panY} while panning
  let pinch = null;  // {distance, mid, zoom, panX, panY}
  let spaceHeld = false;
  const pointers = new Map();

  function brushWidth(e) {
    const base = Number(size.value);
    return e.pointerType === "pen" && pressure.checked && e.pressure > 0 ? Math.max(1, base * e.pressure) : base;
  }
  function paint(from, to, width) {
    ctx.save();
    ctx.globalCompositeOperation = tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = MASK_COLOUR;
    ctx.lineWidth = width;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      ctx.arc(to.x, to.y, width / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    }
    ctx.restore();
  }
  function endStroke(keep) {
    if (!stroke) return;
    stroke = null;
    if (keep) buttons();
    else restore(steps.cancel()); // a second finger came down: a pinch, not a stroke
  }
  const mid = () => {
    const [a, b] = [...pointers.values()];
    return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2, d: Math.hypot(a.x - b.x, a.y - b.y) || 1 };
  };
  function viewPoint(e) {
    const r = view.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }

  view.addEventListener("pointerdown", (e) => {
    if (!source) return;
    view.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, viewPoint(e));
    e.preventDefault();
    view.focus({ preventScroll: true });
    if (pointers.size === 2) {
      endStroke(false);
      drag = null;
      const m = mid();
      pinch = { distance: m.d, mid: m, zoom, panX, panY };
      return;
    }
    if (pointers.size > 2) return;
    const panning = tool === "pan" || e.button === 1 || spaceHeld || !masking;
    if (panning) {
      drag = { ...viewPoint(e), panX, panY };
    } else if (e.button === 0) {
      steps.remember(snapshot());
      const p = toImage(e);
      stroke = { last: p };
      paint(p, p, brushWidth(e));
    }
  });
  view.addEventListener("pointermove", (e) => {
    moveCursor(e);
    if (!pointers.has(e.pointerId)) return;
    pointers.set(e.pointerId, viewPoint(e));
    if (pinch && pointers.size >= 2) {
      const m = mid();
      zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, pinch.zoom * (m.d / pinch.distance)));
      panX = m.x - (pinch.mid.x - pinch.panX) * (zoom / pinch.zoom);
      panY = m.y - (pinch.mid.y - pinch.panY) * (zoom / pinch.zoom);
      place();
    } else if (drag) {
      const p = viewPoint(e);
      panX = drag.panX + p.x - drag.x;
      panY = drag.panY + p.y - drag.y;
      place();
    } else if (stroke) {
      const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
      for (const ev of events.length ? events : [e]) {
        const p = toImage(ev);
        paint(stroke.last, p, brushWidth(ev));
        stroke.last = p;
      }
    }
  });
  const release = (e) => {
    if (!pointers.delete(e.pointerId)) return;
    if (pointers.size < 2) pinch = null;
    if (!pointers.size) { drag = null; endStroke(true); }
  };
  view.addEventListener("pointerup", release);
  view.addEventListener("pointercancel", release);
  view.addEventListener("pointerleave", () => { cursor.hidden = true; });
  view.addEventListener("wheel", (e) => { // Ctrl+wheel, or a trackpad pinch; the plain wheel scrolls the page
    if (!source || !(e.ctrlKey || e.metaKey)) return;
    e.preventDefault();
    const p = viewPoint(e);
    zoomAt(Math.exp(-e.deltaY * 0.0015), p.x, p.y);
  }, { passive: false });

  function moveCursor(e) {
    const paints = masking && source && tool !== "pan" && e.pointerType !== "touch" && !spaceHeld;
    cursor.hidden = !paints;
    if (!paints) return;
    const p = viewPoint(e);
    const d = Number(size.value) * zoom;
    Object.assign(cursor.style, { width: `${d}px`, height: `${d}px`, transform: `translate(${p.x - d / 2}px, ${p.y - d / 2}px)` });
  }

  view.addEventListener("keydown", (e) => {
    if (!source && (e.key === "Enter" || e.key === " ")) { // empty: the canvas is the way to an image
      e.preventDefault();
      if (!e.repeat) fileInput.click();
      return;
    }
    if (keys?.keydown(e)) return;
    const key = e.key.toLowerCase();
    if (e.key === " ") { spaceHeld = true; e.preventDefault(); }
    else if ((e.ctrlKey || e.metaKey) && key === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); }
    else if ((e.ctrlKey || e.metaKey) && key === "y") { e.preventDefault(); redo(); }
    else if (e.key === "[" || e.key === "]") { size.value = Number(size.value) + (e.key === "]" ? 2 : -2); keys?.place(); }
    else if (e.key === "+" || e.key === "=") zoomBy(1.25);
    else if (e.key === "-") zoomBy(1 / 1.25);
  });
  view.addEventListener("keyup", (e) => { if (e.key === " ") spaceHeld = false; });

  // --- getting images in ---
  view.addEventListener("click", () => { if (!source) fileInput.click(); });
  dropTarget(view, load);
  new ResizeObserver(() => { if (source) fit(); }).observe(view);
  setTool(tool);
  buttons();

  return {
    element, load, extend, clearMask,
    hasImage: () => Boolean(source),
    imageDataURL: () => toDataURL(source),
    // The mask white (repaint) on black, or null when nothing is painted.
    maskDataURL() {
      if (!source || maskEmpty()) return null;
      const out = copy(maskLayer);
      const c = out.getContext("2d");
      c.globalCompositeOperation = "source-in";
      c.fillStyle = "#fff";
      c.fillRect(0, 0, out.width, out.height);
      c.globalCompositeOperation = "destination-over";
      c.fillStyle = "#000";
      c.fillRect(0, 0, out.width, out.height);
      return toDataURL(out);
    },
  };
}
