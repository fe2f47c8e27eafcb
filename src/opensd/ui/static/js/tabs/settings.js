// Settings: A1111's settings that change what opensd makes, by section, as A1111's Settings tab
// shows them. Values come from GET /sdapi/v1/options, each setting's kind, choices and range from
// GET /opensd/v1/options-info; "Apply settings" sends only what changed (POST /sdapi/v1/options,
// which checks every value before any takes effect, so a bad one changes nothing and is named).
import { api } from "../api.js";
import { clear, field, h, icon, toast } from "../dom.js";
import { setOptions } from "../form.js";

// [section, [[setting, label, hint?], ...]]: the settings opensd acts on (the others A1111 has are
// kept and reported by the API but change nothing here).
export const SECTIONS = [
  ["Sampler parameters", [
    ["eta_ancestral", "Eta for k-diffusion samplers", "noise multiplier of the ancestral and SDE samplers"],
    ["eta_ddim", "Eta for DDIM", "0: deterministic DDIM"],
    ["s_churn", "Sigma churn"], ["s_tmin", "Sigma tmin"], ["s_tmax", "Sigma tmax"], ["s_noise", "Sigma noise"],
    ["eta_noise_seed_delta", "Eta noise seed delta (ENSD)", "added to the seed of the ancestral samplers' noise"],
    ["randn_source", "Random number generator source", "CPU and GPU give the same images here: noise is drawn on the CPU"],
    ["sigma_min", "Schedule min sigma", "0: the model's own (Karras, Exponential, KL Optimal, SGM Uniform)"],
    ["sigma_max", "Schedule max sigma", "0: the model's own"],
    ["rho", "Schedule rho", "Karras; 0: 7"],
    ["beta_dist_alpha", "Beta schedule alpha"], ["beta_dist_beta", "Beta schedule beta"],
    ["always_discard_next_to_last_sigma", "Always discard next-to-last sigma"],
    ["sgm_noise_multiplier", "SGM noise multiplier", "scale the first noise as SDXL's reference code; for reproducing images"],
    ["use_old_karras_scheduler_sigmas", "Old Karras scheduler sigmas (0.1 to 10)"],
    ["uni_pc_variant", "UniPC variant"], ["uni_pc_order", "UniPC order"],
    ["uni_pc_skip_type", "UniPC skip type"],
    ["uni_pc_lower_order_final", "UniPC: lower order at the final steps"],
  ]],
  ["Optimizations", [
    ["token_merging_ratio", "Token merging ratio", "faster for a little quality; 0: off (A1111's ToMe)"],
    ["token_merging_ratio_img2img", "Token merging ratio for img2img", "0: the ratio above"],
    ["token_merging_ratio_hr", "Token merging ratio for the hires pass", "0: the first pass's"],
    ["hypertile_enable_unet", "Hypertile: tile the UNet's self-attention"],
    ["hypertile_enable_unet_secondpass", "Hypertile: also in the hires pass"],
    ["hypertile_max_depth_unet", "Hypertile UNet max depth"], ["hypertile_max_tile_unet", "Hypertile UNet max tile size"],
    ["hypertile_swap_size_unet", "Hypertile UNet swap size"],
    ["hypertile_enable_vae", "Hypertile: tile the VAE decoder's attention"],
    ["hypertile_max_tile_vae", "Hypertile VAE max tile size"], ["hypertile_swap_size_vae", "Hypertile VAE swap size"],
    ["s_min_uncond", "Negative Guidance minimum sigma (NGMS)", "skip the negative prompt below this noise level, every other step; 0: off"],
    ["s_min_uncond_all", "NGMS on every step"],
    ["skip_early_cond", "Skip early CFG", "fraction of the first steps without the negative prompt; 0: off"],
    ["pad_cond_uncond", "Pad prompt and negative prompt to the same length", "one UNet call instead of two"],
    ["pad_cond_uncond_v0", "Pad conds (v0 method)"],
  ]],
  ["Stable Diffusion", [
    ["sd_noise_schedule", "Noise schedule for sampling", "Zero Terminal SNR: for models trained with it"],
    ["use_downcasted_alpha_bar", "Downcast alphas_cumprod to fp16", "for reproducing images made that way"],
    ["emphasis", "Emphasis mode", "how (word:1.2) weights act on the text encoder's output"],
    ["use_old_emphasis_implementation", "Old emphasis implementation", "for reproducing old seeds"],
    ["comma_padding_backtrack", "Prompt word wrap length limit", "tokens after the last comma that move to the next 75-token chunk"],
    ["sdxl_clip_l_skip", "CLIP skip applies to SDXL's CLIP-L too"],
    ["sdxl_crop_top", "SDXL crop top coordinate"], ["sdxl_crop_left", "SDXL crop left coordinate"],
    ["extra_networks_default_multiplier", "Default LoRA weight", "used for <lora:name> without a weight"],
    ["hires_fix_refiner_pass", "Hires fix: which pass the refiner finishes"],
    ["refiner_switch_by_sample_steps", "Switch to the refiner by sampling steps", "A1111's old behaviour: not at a noise level"],
  ]],
  ["img2img", [
    ["img2img_color_correction", "Color correction", "match the results' colours to the init image's"],
    ["img2img_fix_steps", "Run exactly the steps set", "off: steps x denoising strength, as A1111's default"],
    ["initial_noise_multiplier", "Noise multiplier for img2img"],
    ["img2img_extra_noise", "Extra noise multiplier for img2img and hires fix"],
    ["inpainting_mask_weight", "Inpainting conditioning mask strength", "inpainting models; 0: the whole image kept"],
    ["img2img_background_color", "Colour under an init image's transparent parts"],
  ]],
  ["VAE", [
    ["sd_vae_encode_method", "VAE type for encode", "TAESD: the tiny autoencoder, faster with fewer details"],
    ["sd_vae_decode_method", "VAE type for decode"],
  ]],
  ["Saving images", [
    ["samples_format", "File format for images"], ["grid_format", "File format for grids"],
    ["jpeg_quality", "Quality for saved JPEG images"], ["webp_lossless", "Lossless WebP"],
    ["enable_pnginfo", "Save the generation parameters in the image files", "off: images carry no prompt or settings"],
  ]],
  ["Upscaling", [
    ["ESRGAN_tile", "Tile size for model upscalers (0: no tiling)"], ["ESRGAN_tile_overlap", "Tile overlap, in pixels"],
  ]],
];

const COLOR = /^#[0-9a-f]{6}$/i;

function control(key, info, value) {
  const attrs = { name: key, id: `setting-${key}` };
  if (info.kind === "bool") return h("input", { ...attrs, type: "checkbox", checked: Boolean(value) });
  if (info.kind === "choice") {
    const el = h("select", attrs);
    setOptions(el, info.choices.map((c) => [c, c]));
    el.value = info.choices.find((c) => c.toLowerCase() === String(value).toLowerCase()) ?? info.choices[0];
    return el;
  }
  if (info.kind === "int" || info.kind === "float") {
    return h("input", { ...attrs, type: "number", step: info.kind === "int" ? 1 : "any", min: info.min, max: info.max,
      value, required: true, inputmode: info.kind === "int" ? "numeric" : "decimal" }); // cleared: refused, not 0
  }
  if (COLOR.test(String(info.default))) return h("input", { ...attrs, type: "color", value });
  return h("input", { ...attrs, type: "text", value: value ?? "" });
}

function read(el, info) {
  if (info.kind === "bool") return el.checked;
  if (info.kind === "int") return Math.trunc(Number(el.value));
  if (info.kind === "float") return Number(el.value);
  return el.value;
}

function write(el, info, value) {
  if (info.kind === "bool") el.checked = Boolean(value);
  else el.value = value ?? "";
}

export async function mount(panel) {
  const body = h("div", { class: "stack" });
  const apply = h("button", { type: "submit", class: "primary" }, icon("send"), "Apply settings");
  const form = h("form", { class: "stack", "aria-label": "Settings" }, body, h("div", { class: "gen-actions" }, apply)); // sticky: in reach from any section
  panel.append(form);
  let info = {}, saved = {};
  const fields = []; // { key, el, info }

  async function load() {
    [info, saved] = await Promise.all([api.get("/opensd/v1/options-info"), api.get("/sdapi/v1/options")]);
    fields.length = 0;
    clear(body, SECTIONS.map(([title, items]) => {
      const shown = items.filter(([key]) => key in info);
      const controls = shown.map(([key, label, hint]) => {
        const el = control(key, info[key], saved[key]);
        fields.push({ key, el, info: info[key] });
        const f = info[key].kind === "bool" ? h("label", { class: "check" }, el, label) : field(label, el);
        return hint ? h("div", {}, f, h("p", { class: "muted" }, hint)) : f;
      });
      const defaults = h("button", { type: "button", onclick: () => {
        for (const f of fields) if (shown.some(([key]) => key === f.key)) write(f.el, f.info, f.info.default);
        toast(`${title}: A1111's defaults filled in; press Apply settings to keep them.`);
      } }, "Defaults");
      return h("section", { class: "card stack", "aria-label": title },
        h("div", { class: "toolbar spread" }, h("h2", {}, title), defaults), h("div", { class: "grid2" }, controls));
    }));
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const changes = {};
    for (const f of fields) {
      const value = read(f.el, f.info);
      if (JSON.stringify(value) !== JSON.stringify(saved[f.key])) changes[f.key] = value;
    }
    const n = Object.keys(changes).length;
    if (!n) { toast("Nothing changed."); return; }
    apply.disabled = true;
    try {
      await api.post("/sdapi/v1/options", changes);
      Object.assign(saved, changes);
      toast(`${n} setting${n === 1 ? "" : "s"} saved.`);
    } catch (err) {
      toast(err.message, "error");
    } finally {
      apply.disabled = false;
    }
  });
  try { await load(); } catch (err) { toast(err.message, "error"); }
}
