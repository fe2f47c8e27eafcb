// Model families as the server names them (/opensd/v1/checkpoints' and /opensd/v1/models' `family`), for
// people; and whether a ControlNet or LoRA fits a checkpoint: a DiT family's add-ons run only on that
// family's models, and SD's on no DiT model (adapters/controlnet.py and the LoRA loader refuse the rest).
export const FAMILIES = { sd1: "SD 1.x", sd2: "SD 2.x", sdxl: "SDXL", sdxl_refiner: "SDXL refiner", small: "small",
  sd3: "SD3", flux: "Flux.1", chroma: "Chroma", flux2: "FLUX.2", z_image: "Z-Image", qwen_image: "Qwen-Image" };
const DIT = new Set(["sd3", "flux", "chroma", "flux2", "z_image", "qwen_image"]);

export const familyLabel = (family) => FAMILIES[family] || family;

// A ControlNet as /controlnet/model_list names it ("name [hash]"): its file's name without the suffix.
export const controlnetStem = (name) => name.replace(/ \[[0-9a-f]+\]$/i, "");

// {stem: family} of /opensd/v1/models' files of `kind` (read from each file's header; null: not told),
// keyed as /controlnet/model_list and /sdapi/v1/loras name them: the file name without its suffix
const fileStem = (file) => file.replace(/\.(safetensors|ckpt|pth|pt|bin|gguf)$/i, "");
export function familiesByStem(models, kind) {
  return Object.fromEntries((models?.[kind] || []).map((m) => [fileStem(m.name), m.family]));
}
export const controlnetFamilies = (models) => familiesByStem(models, "controlnet");

// The stems of the ControlNets that inpaint from a mask (/opensd/v1/models' takes_mask: Z-Image Fun 2.x,
// Qwen-Image's blockwise Inpaint file). The unit form has no mask of its own: the server gives such a
// unit an Inpaint request's mask (and Z-Image Fun the Inpaint image as the image to inpaint).
export const maskTakers = (models) =>
  new Set((models?.controlnet || []).filter((m) => m.takes_mask).map((m) => fileStem(m.name)));
export const INPAINT_MASK_NOTE = "uses the Inpaint tab's mask";

// Whether the server would refuse an add-on (ControlNet, LoRA) of family `addon` on a checkpoint of
// family `checkpoint`: one of them a DiT family, and not the same.
export function misfit(addon, checkpoint) {
  return Boolean(addon && checkpoint && addon !== checkpoint && (DIT.has(addon) || DIT.has(checkpoint)));
}

// Whether a ControlNet of `family` takes a Union control type: SD's ControlNet++ and Flux.1's Union do;
// the other DiT families' union ControlNets (Z-Image Fun, InstantX Qwen-Image) read the map as it is,
// and the server refuses a type for them.
export const takesControlType = (family) => !DIT.has(family) || family === "flux";
