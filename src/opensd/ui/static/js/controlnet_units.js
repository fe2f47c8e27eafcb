// The ControlNet units (up to 3) that the ControlNet tab edits and that every Generate and img2img
// request carries, as the sd-webui-controlnet extension takes them: alwayson_scripts.controlnet.args.
// The settings are remembered between visits; the images stay in this page only.
import { emit } from "./shared.js";

export const UNIT_COUNT = 3;
export const CHANGED = "opensd:controlnet"; // on the shared bus, after any unit changes
const KEY = "opensd.controlnet";
export const DEFAULTS = {
  enabled: false, module: "canny", model: "None", weight: 1, guidance_start: 0, guidance_end: 1, control_mode: 0,
  resize_mode: 1, pixel_perfect: false, processor_res: 512, threshold_a: 100, threshold_b: 200,
  union_control_type: "Unknown", // a Union ControlNet's control type; "Unknown": unset
};

function restore() {
  let saved = [];
  try { saved = JSON.parse(localStorage.getItem(KEY) || "[]") || []; } catch { saved = []; }
  return Array.from({ length: UNIT_COUNT }, (_, i) => {
    const known = Object.fromEntries(Object.entries(saved[i] || {}).filter(([k]) => k in DEFAULTS));
    return { ...DEFAULTS, ...known, enabled: false, image: null, imageName: "" };
  });
}

export const units = restore(); // each: DEFAULTS' fields + image (data URL or null) + imageName

export function changed() {
  localStorage.setItem(KEY, JSON.stringify(units.map(({ image, imageName, enabled, ...rest }) => rest)));
  emit(CHANGED, {});
}

// Units a request uses: enabled, with a model, and with an image (img2img falls back to its own image).
export function activeUnits(img2img) {
  return units.map((u, i) => ({ ...u, index: i }))
    .filter((u) => u.enabled && u.model && u.model !== "None" && (u.image || img2img));
}

// The request fields for the active units ({} when none is active).
export function controlnetFields(img2img) {
  const active = activeUnits(img2img);
  if (!active.length) return {};
  const args = active.map(({ image, imageName, index, ...unit }) => ({ ...unit, image: image || undefined }));
  return { alwayson_scripts: { controlnet: { args } } };
}
