// Generate (txt2img): the form, queued submission (POST /opensd/v1/txt2img), live progress and the
// results of this page's jobs. Parameters sent here by other tabs (reuse) arrive through take("generate").
import { api } from "../api.js";
import { append, clear, debounce, field, h, icon, toast } from "../dom.js";
import { loadForm, saveForm } from "../persist.js";
import { promptEditor } from "../prompt_editor.js";
import { EVENTS, on, emit, sendTo, shared, take, TARGETS } from "../shared.js";

const KEY = "opensd.generate";
const RATIOS = [[1, 1], [3, 4], [4, 3], [2, 3], [3, 2], [9, 16], [16, 9]];
const HIRES_UPSCALERS = ["Latent", "Latent (nearest)", "Lanczos"];

const round8 = (v) => Math.max(8, Math.round(v / 8) * 8);

function number(name, { min, max, step = 1, value }) {
  return h("input", { type: "number", name, min, max, step, value, inputmode: step < 1 ? "decimal" : "numeric" });
}

// A range and a number input kept equal; only the number has a name (submitted and remembered).
function slider(label, name, opts) {
  const num = number(name, opts);
  const range = h("input", { type: "range", min: opts.min, max: opts.max, step: opts.step ?? 1, value: opts.value,
    tabindex: "-1", "aria-hidden": "true", "data-persist": "no" });
  range.addEventListener("input", () => { num.value = range.value; num.dispatchEvent(new Event("input", { bubbles: true })); });
  num.addEventListener("input", () => { range.value = num.value; });
  const f = field(label, num);
  f.replaceChildren(f.firstChild, h("div", { class: "slider" }, range, num));
  return f;
}

function select(name, options, value) {
  const el = h("select", { name });
  setOptions(el, options, value);
  return el;
}

function setOptions(el, options, value) {
  clear(el, options.map(([v, text]) => h("option", { value: v }, text)));
  if (value !== undefined && options.some(([v]) => v === value)) el.value = value;
}

// Choose the option whose value or text equals `wanted` (case-insensitive); false if none does.
function choose(el, wanted) {
  const w = String(wanted).toLowerCase();
  const hit = [...el.options].find((o) => o.value.toLowerCase() === w || o.text.toLowerCase() === w);
  if (hit) el.value = hit.value;
  return Boolean(hit);
}

export async function mount(panel) {
  const steps = () => Number(form.elements.steps?.value) || 20;
  const prompt = promptEditor({ label: "Prompt", name: "prompt", placeholder: "a red heart, noto emoji style", getSteps: steps });
  const negative = promptEditor({ label: "Negative prompt", name: "negative_prompt", getSteps: steps });
  const model = h("select", { name: "model" });
  const vae = h("select", { name: "vae" });
  const sampler = h("select", { name: "sampler" });
  const scheduler = h("select", { name: "scheduler" });
  const width = number("width", { min: 8, max: 4096, step: 8, value: 512 });
  const height = number("height", { min: 8, max: 4096, step: 8, value: 512 });
  const seed = number("seed", { min: -1, step: 1, value: -1 });
  const presets = h("div", { class: "presets", role: "group", "aria-label": "Size presets" });
  const pickers = h("div", { class: "stack" });
  const generateButton = h("button", { type: "submit", class: "primary", title: "Ctrl+Enter" }, icon("sparkle"), "Generate");

  const form = h("form", { class: "gen-side", "aria-label": "Text to image settings" },
    h("div", { class: "card stack" }, prompt.element, negative.element, pickers),
    h("div", { class: "card stack" },
      h("div", { class: "grid2" }, field("Model", model), field("VAE", vae),
        field("Sampler", sampler), field("Schedule type", scheduler)),
      slider("Sampling steps", "steps", { min: 1, max: 150, value: 20 }),
      slider("CFG scale", "cfg_scale", { min: 1, max: 30, step: 0.5, value: 7 }),
      h("div", { class: "row" }, field("Width", width),
        h("button", { type: "button", class: "icon-button", "aria-label": "Swap width and height",
          onclick: () => { [width.value, height.value] = [height.value, width.value]; changed(); } }, icon("swap")),
        field("Height", height)),
      presets,
      h("div", { class: "row" },
        field("Seed (-1: random)", seed),
        h("button", { type: "button", class: "icon-button", "aria-label": "Random seed",
          onclick: () => { seed.value = -1; changed(); } }, icon("dice")),
        h("button", { type: "button", class: "icon-button", "aria-label": "Reuse the seed of the shown image",
          onclick: reuseSeed }, icon("recycle"))),
      h("div", { class: "grid2" },
        field("Batch count", number("n_iter", { min: 1, max: 100, value: 1 })),
        field("Batch size", number("batch_size", { min: 1, max: 8, value: 1 })),
        field("CLIP skip", number("clip_skip", { min: 1, max: 12, value: 1 })))),
    h("details", { class: "card" }, h("summary", {}, "Variation seed"),
      h("div", { class: "stack" },
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "variation" }), "Use a variation seed"),
        field("Variation seed (-1: random)", number("subseed", { min: -1, value: -1 })),
        slider("Variation strength", "subseed_strength", { min: 0, max: 1, step: 0.01, value: 0 }))),
    h("details", { class: "card" }, h("summary", {}, "Hires fix"),
      h("div", { class: "stack" },
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "enable_hr" }), "Enable hires fix"),
        h("div", { class: "grid2" },
          field("Upscaler", select("hr_upscaler", HIRES_UPSCALERS.map((u) => [u, u]), "Latent")),
          field("Upscale by", number("hr_scale", { min: 1, max: 4, step: 0.05, value: 2 })),
          field("Hires steps (0: same)", number("hr_second_pass_steps", { min: 0, max: 150, value: 0 }))),
        slider("Denoising strength", "denoising_strength", { min: 0, max: 1, step: 0.01, value: 0.7 }))),
    h("div", { class: "gen-actions" }, generateButton));

  // --- right side: progress and results ---
  const status = h("p", { class: "muted", role: "status" }, "Idle");
  const bar = h("div");
  const preview = h("img", { alt: "Live preview of the running job", hidden: true });
  const interrupt = h("button", { type: "button", onclick: () => api.post("/sdapi/v1/interrupt").catch(fail) },
    icon("stop"), "Interrupt");
  const skip = h("button", { type: "button", onclick: () => api.post("/sdapi/v1/skip").catch(fail) },
    icon("skip"), "Skip");
  const resultMain = h("div", { class: "result-main" });
  const resultThumbs = h("div", { class: "results", role: "group", "aria-label": "Images of the last job" });
  const infoBox = h("pre", { class: "infotext", hidden: true });
  const actions = h("div", { class: "toolbar", hidden: true });
  const out = h("div", { class: "gen-side" },
    h("div", { class: "card stack progress-card", "aria-label": "Progress" },
      status, h("div", { class: "bar" }, bar), h("div", { class: "preview" }, preview),
      h("div", { class: "toolbar" }, interrupt, skip)),
    h("div", { class: "card stack", "aria-label": "Results" }, h("h2", {}, "Results"),
      resultMain, resultThumbs, actions, infoBox));
  panel.append(h("div", { class: "gen-layout" }, form, out));

  // --- data from the server ---
  let checkpoints = [];
  const [ckpts, vaes, samplers, schedulers, loras, embeddings, styles] = await Promise.all([
    api.get("/opensd/v1/checkpoints"), api.get("/sdapi/v1/sd-vae"), api.get("/sdapi/v1/samplers"),
    api.get("/sdapi/v1/schedulers"), api.get("/sdapi/v1/loras"), api.get("/sdapi/v1/embeddings"),
    api.get("/sdapi/v1/prompt-styles"),
  ]).catch((e) => { fail(e); return [{ items: [] }, [], [], [], [], { loaded: {} }, []]; });
  checkpoints = ckpts.items;
  setOptions(model, checkpoints.map((c) => [c.name, c.title]), ckpts.current ?? undefined);
  setOptions(vae, [["Automatic", "Automatic"], ["None", "None"], ...vaes.map((v) => [v.model_name, v.model_name])]);
  setOptions(sampler, samplers.map((s) => [s.name, s.name]), "Euler");
  setOptions(scheduler, [["", "Automatic"], ...schedulers.map((s) => [s.name, s.label])]);
  append(pickers,
    picker("LoRA", loras.map((l) => [l.alias || l.name, () => prompt.insert(`<lora:${l.alias || l.name}:1>`)])),
    picker("Embeddings", Object.keys(embeddings.loaded || {}).map((n) => [n, () => prompt.insert(n)])),
    styles.length ? picker("Styles", styles.map((s) => [s.name, () => applyStyle(s)])) : null);

  const remembered = loadForm(form, KEY);
  if (!("width" in remembered)) setSize(familyOf(model.value)?.resolution ?? 512);
  showPresets();
  prompt.refresh();
  negative.refresh();

  // --- behaviour ---
  function familyOf(name) { return checkpoints.find((c) => c.name === name); }
  function setSize(side) { width.value = side; height.value = side; }
  function showPresets() {
    const r = familyOf(model.value)?.resolution ?? 512;
    clear(presets, RATIOS.map(([a, b]) => {
      const w = round8(r * Math.sqrt(a / b)), hh = round8(r * Math.sqrt(b / a));
      return h("button", { type: "button", title: `${a}:${b}`,
        onclick: () => { width.value = w; height.value = hh; changed(); } }, `${w}×${hh}`);
    }));
  }
  model.addEventListener("change", () => {
    setSize(familyOf(model.value)?.resolution ?? 512);
    showPresets();
  });
  function picker(title, entries) {
    const list = entries.length
      ? entries.map(([label, act]) => h("button", { type: "button", onclick: act }, label))
      : [h("span", { class: "muted" }, "none found in the models folder")];
    return h("details", {}, h("summary", {}, `${title} (${entries.length})`), h("div", { class: "picker-list" }, list));
  }
  function applyStyle(style) {
    if (style.prompt) prompt.insert(style.prompt);
    if (style.negative_prompt) negative.insert(style.negative_prompt);
  }

  const save = debounce(() => saveForm(form, KEY), 300);
  function changed() { save(); }
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  panel.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });

  function request() {
    const v = form.elements;
    const int = (name) => Math.trunc(Number(v[name].value));
    const num = (name) => Number(v[name].value);
    const body = {
      prompt: v.prompt.value, negative_prompt: v.negative_prompt.value,
      sampler_name: v.sampler.value, scheduler: v.scheduler.value || null,
      steps: int("steps"), cfg_scale: num("cfg_scale"), width: int("width"), height: int("height"),
      seed: int("seed"), n_iter: int("n_iter"), batch_size: int("batch_size"), send_images: false,
      override_settings: { sd_model_checkpoint: v.model.value, CLIP_stop_at_last_layers: int("clip_skip") },
    };
    if (v.vae.value && v.vae.value !== "Automatic") body.override_settings.sd_vae = v.vae.value;
    if (v.variation.checked) {
      body.subseed = int("subseed");
      body.subseed_strength = num("subseed_strength");
    }
    if (v.enable_hr.checked) {
      Object.assign(body, { enable_hr: true, hr_upscaler: v.hr_upscaler.value, hr_scale: num("hr_scale"),
        hr_second_pass_steps: int("hr_second_pass_steps"), denoising_strength: num("denoising_strength") });
    }
    return body;
  }

  const mine = new Set();
  async function generate() {
    if (!form.reportValidity()) return;
    try {
      const queued = await api.post("/opensd/v1/txt2img", request());
      mine.add(queued.job_id);
      emit(EVENTS.JOB_QUEUED, { id: queued.job_id });
      status.textContent = queued.position > 0 ? `Queued: position ${queued.position}` : "Starting";
    } catch (e) { fail(e); }
  }

  on(EVENTS.QUEUE, (q) => {
    if (q.running) return;
    const waiting = q.pending.filter((j) => mine.has(j.id)).length;
    status.textContent = waiting ? `${waiting} waiting` : "Idle";
    bar.style.width = "0";
    preview.hidden = true;
  });
  on(EVENTS.PROGRESS, (p) => {
    const s = p.state || {};
    const eta = p.eta_relative > 0 ? ` · ETA ${p.eta_relative.toFixed(1)} s` : "";
    status.textContent = s.sampling_steps ? `Step ${s.sampling_step}/${s.sampling_steps}${eta}` : "Starting";
    bar.style.width = `${Math.round((p.progress || 0) * 100)}%`;
    if (p.current_image) { preview.src = `data:image/png;base64,${p.current_image}`; preview.hidden = false; }
  });
  on(EVENTS.JOB_DONE, async ({ id }) => {
    if (!mine.has(id)) return;
    mine.delete(id);
    try {
      const job = await api.get(`/opensd/v1/jobs/${encodeURIComponent(id)}`);
      if (job.status === "failed") toast(`Generation failed: ${job.error || "unknown error"}`, "error");
      else if (job.status === "cancelled") toast("The job was cancelled before it ran.");
      const files = job.result?.files || [];
      if (files.length) showResults(job);
      const unsupported = job.result?.info?.unsupported_fields || [];
      if (unsupported.length) toast(`Not applied by this server: ${unsupported.join(", ")}`, "error");
    } catch (e) { fail(e); }
  });

  let shown = null; // {job, index}
  function showResults(job) {
    const n = job.result.files.length;
    clear(resultThumbs, Array.from({ length: n }, (_, i) => h("button", {
      type: "button", "aria-label": `Image ${i + 1}`, "aria-pressed": "false", onclick: () => showImage(job, i),
    }, h("img", { src: imageUrl(job, i), alt: "" }))));
    showImage(job, 0);
  }
  function imageUrl(job, i) { return `/opensd/v1/jobs/${encodeURIComponent(job.id)}/images/${i}`; }
  function showImage(job, i) {
    shown = { job, index: i };
    const info = job.result.info || {};
    const text = (info.infotexts || [])[i] || "";
    clear(resultMain, h("img", { src: imageUrl(job, i), alt: `Generated image: ${info.prompt || ""}`,
      "data-seed": (info.all_seeds || [])[i], class: info.width <= 128 ? "pixel" : null }));
    [...resultThumbs.children].forEach((b, k) => b.setAttribute("aria-pressed", String(k === i)));
    infoBox.textContent = text;
    infoBox.hidden = !text;
    shared.lastImage = { url: imageUrl(job, i), infotext: text, name: `${job.id}-${i}.png` };
    clear(actions,
      h("a", { class: "button", href: imageUrl(job, i), download: `${job.id}-${i}.png` }, icon("download"), "Download"),
      Object.entries(TARGETS).filter(([id]) => id !== "generate").map(([id, label]) =>
        h("button", { type: "button", onclick: () => sendImage(id) }, icon("send"), `Send to ${label}`)));
    actions.hidden = false;
  }
  async function sendImage(target) {
    if (!shown) return;
    const blob = await fetch(imageUrl(shown.job, shown.index)).then((r) => r.blob());
    sendTo(target, { image: blob, name: `${shown.job.id}-${shown.index}.png`, params: null,
      infotext: shared.lastImage?.infotext || "" });
  }
  function reuseSeed() {
    const s = shown && (shown.job.result.info?.all_seeds || [])[shown.index];
    if (s === undefined) { toast("No image shown yet: generate one first."); return; }
    seed.value = s;
    changed();
  }

  // Parameters from the gallery or PNG info: fill the form so the same pixels come out again.
  function apply(req) {
    const v = form.elements;
    prompt.setValue(req.prompt ?? "");
    negative.setValue(req.negative_prompt ?? "");
    const set = (name, value) => { if (value !== undefined && value !== null) v[name].value = value; };
    set("steps", req.steps); set("cfg_scale", req.cfg_scale); set("width", req.width); set("height", req.height);
    set("seed", req.seed);
    v.n_iter.value = 1; v.batch_size.value = 1;
    if (req.sampler_name && !choose(sampler, req.sampler_name)) toast(`Sampler ${req.sampler_name} is not available`, "error");
    if (!req.scheduler) scheduler.value = "";
    else if (!choose(scheduler, req.scheduler)) toast(`Schedule ${req.scheduler} is not available`, "error");
    v.variation.checked = Boolean(req.subseed_strength);
    set("subseed", req.subseed ?? -1); set("subseed_strength", req.subseed_strength ?? 0);
    v.enable_hr.checked = Boolean(req.enable_hr);
    if (req.enable_hr) {
      set("hr_scale", req.hr_scale);
      set("hr_second_pass_steps", req.hr_second_pass_steps ?? 0);
      set("denoising_strength", req.denoising_strength);
      if (req.hr_upscaler) choose(v.hr_upscaler, req.hr_upscaler);
    }
    const o = req.override_settings || {};
    v.clip_skip.value = o.CLIP_stop_at_last_layers ?? 1;
    if (o.sd_model_checkpoint) { choose(model, o.sd_model_checkpoint); showPresets(); }
    vae.value = o.sd_vae && choose(vae, o.sd_vae) ? vae.value : "Automatic";
    form.querySelectorAll("input[type=range]").forEach((r) => r.nextSibling?.dispatchEvent(new Event("input")));
    saveForm(form, KEY);
  }
  function receive() {
    const sent = take("generate");
    if (!sent?.params) return;
    apply(sent.params);
    for (const note of sent.notes || []) toast(note);
    toast("Parameters applied: press Generate for the same image.");
  }
  on(EVENTS.SEND, ({ target }) => { if (target === "generate") receive(); });
  receive();
}

function fail(e) { toast(e.message || String(e), "error"); }
