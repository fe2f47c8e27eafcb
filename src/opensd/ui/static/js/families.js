// Model families as the server names them (/opensd/v1/checkpoints' and /opensd/v1/models' `family`), for
// people; and whether a ControlNet file fits a checkpoint: a DiT family's ControlNets run only on that
// family's models, and SD's ControlNets on no DiT model (adapters/controlnet.py refuses the rest).
export const FAMILIES = { sd1: "SD 1.x", sd2: "SD 2.x", sdxl: "SDXL", sdxl_refiner: "SDXL refiner", small: "small",
  sd3: "SD3", flux: "Flux.1", chroma: "Chroma", flux2: "FLUX.2", z_image: "Z-Image", qwen_image: "Qwen-Image" };
const DIT = new Set(["sd3", "flux", "chroma", "flux2", "z_image", "qwen_image"]);

export const familyLabel = (family) => FAMILIES[family] || family;

// A ControlNet as /controlnet/model_list names it ("name [hash]"): its file's name without the suffix.
export const controlnetStem = (name) => name.replace(/ \[[0-9a-f]+\]$/i, "");

// {stem: family} of /opensd/v1/models' ControlNets (read from each file's header; null: not told)
export function controlnetFamilies(models) {
  const stem = (file) => file.replace(/\.(safetensors|ckpt|pth|pt|bin|gguf)$/i, "");
  return Object.fromEntries((models?.controlnet || []).map((m) => [stem(m.name), m.family]));
}

// Whether the server would refuse a ControlNet of `controlnet` family on a checkpoint of `checkpoint` family.
export function misfit(controlnet, checkpoint) {
  return Boolean(controlnet && checkpoint && controlnet !== checkpoint && (DIT.has(controlnet) || DIT.has(checkpoint)));
}
