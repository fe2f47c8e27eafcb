// The Generate tab's "Hires fix" card, with A1111's fields: upscaler, steps, denoising strength, the
// scale or a target size (0: use the scale), and the second pass's own checkpoint, sampler, schedule
// and prompts ("Use same ..." and empty prompts: the first pass's).
import { field, h } from "./dom.js";
import { UNSENT, choose, number, select, setOptions, slider } from "./form.js";

const SAME_CHECKPOINT = "Use same checkpoint";
const SAME_SAMPLER = "Use same sampler";
const SAME_SCHEDULER = "Use same scheduler";

// `upscalers`: [value, label] pairs; `settings`: the tab's generationSettings (its samplers,
// schedules and checkpoint list).
export function hiresCard(upscalers, settings) {
  const checkpoint = h("select", { name: "hr_checkpoint_name" });
  const sampler = select("hr_sampler_name", [[SAME_SAMPLER, SAME_SAMPLER], ...settings.samplers.map((n) => [n, n])],
    SAME_SAMPLER);
  const scheduler = select("hr_scheduler", [[SAME_SCHEDULER, SAME_SCHEDULER], ...settings.schedulers], SAME_SCHEDULER);
  const prompt = h("textarea", { name: "hr_prompt", rows: 2, placeholder: "empty: the same prompt" });
  const negative = h("textarea", { name: "hr_negative_prompt", rows: 2, placeholder: "empty: the same negative prompt" });
  const element = h("details", { class: "card" }, h("summary", {}, "Hires fix"),
    h("div", { class: "stack" },
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "enable_hr" }), "Enable hires fix"),
      h("div", { class: "grid2" },
        field("Upscaler", select("hr_upscaler", upscalers, "Latent")),
        field("Hires steps (0: same)", number("hr_second_pass_steps", { min: 0, max: 150, value: 0 }))),
      slider("Denoising strength", "denoising_strength", { min: 0, max: 1, step: 0.01, value: 0.7 }),
      h("div", { class: "grid2" },
        field("Upscale by", number("hr_scale", { min: 1, max: 4, step: 0.05, value: 2 })),
        field("Resize width to (0: by scale)", number("hr_resize_x", { min: 0, max: 4096, step: 8, value: 0 })),
        field("Resize height to (0: by scale)", number("hr_resize_y", { min: 0, max: 4096, step: 8, value: 0 }))),
      h("div", { class: "grid2" },
        field("Hires checkpoint", checkpoint), field("Hires sampler", sampler), field("Hires schedule type", scheduler)),
      field("Hires prompt", prompt), field("Hires negative prompt", negative)));
  settings.watchCheckpoints({
    setCheckpoints(names) {
      setOptions(checkpoint, [[SAME_CHECKPOINT, SAME_CHECKPOINT], ...names.map((n) => [n, n])],
        checkpoint.value || SAME_CHECKPOINT);
    },
  });

  const value = (name) => element.querySelector(`[name=${name}]`);
  const int = (name) => Math.trunc(Number(value(name).value));
  // A cleared or out-of-range number is refused at the field (checkForm) while the fix is on (or
  // `force`d on, as the upscale button does), and never blocks Generate while it is off (nothing of
  // the card is sent then).
  const refresh = (force = false) => element.toggleAttribute(UNSENT, !(force || value("enable_hr").checked));
  value("enable_hr").addEventListener("change", () => refresh());
  refresh();
  return {
    element,
    // call after the form's remembered values came back (they are set without events)
    refresh,
    // the request's hires fields (none when the fix is off, unless `force`d on)
    request({ force = false } = {}) {
      if (!force && !value("enable_hr").checked) return {};
      return {
        enable_hr: true, hr_upscaler: value("hr_upscaler").value, hr_scale: Number(value("hr_scale").value),
        hr_second_pass_steps: int("hr_second_pass_steps"), denoising_strength: Number(value("denoising_strength").value),
        hr_resize_x: int("hr_resize_x"), hr_resize_y: int("hr_resize_y"),
        hr_checkpoint_name: checkpoint.value === SAME_CHECKPOINT ? null : checkpoint.value,
        hr_sampler_name: sampler.value === SAME_SAMPLER ? null : sampler.value,
        hr_scheduler: scheduler.value === SAME_SCHEDULER ? null : scheduler.value,
        hr_prompt: prompt.value, hr_negative_prompt: negative.value,
      };
    },
    // Fill from an A1111 request (reuse); what it does not say goes back to the default. Returns
    // what it could not apply (a checkpoint or sampler not here), for the tab to say.
    apply(req) {
      const missing = [];
      value("enable_hr").checked = Boolean(req.enable_hr);
      refresh();
      const set = (name, v, otherwise) => { value(name).value = v ?? otherwise; };
      set("hr_scale", req.hr_scale, 2); set("hr_second_pass_steps", req.hr_second_pass_steps, 0);
      set("denoising_strength", req.denoising_strength, 0.7);
      set("hr_resize_x", req.hr_resize_x, 0); set("hr_resize_y", req.hr_resize_y, 0);
      set("hr_prompt", req.hr_prompt, ""); set("hr_negative_prompt", req.hr_negative_prompt, "");
      if (req.hr_upscaler && !choose(value("hr_upscaler"), req.hr_upscaler)) missing.push(`Hires upscaler ${req.hr_upscaler}`);
      for (const [el, wanted, same, label] of [[checkpoint, req.hr_checkpoint_name, SAME_CHECKPOINT, "Hires checkpoint"],
        [sampler, req.hr_sampler_name, SAME_SAMPLER, "Hires sampler"], [scheduler, req.hr_scheduler, SAME_SCHEDULER, "Hires schedule type"]]) {
        el.value = same;
        if (wanted && wanted !== same && !choose(el, wanted) && !choose(el, String(wanted).replace(/ \[.*\]$/, ""))) {
          missing.push(`${label} ${wanted}`);
        }
      }
      return missing;
    },
  };
}
