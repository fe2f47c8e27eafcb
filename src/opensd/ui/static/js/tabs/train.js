// Train: a LoRA, DreamBooth checkpoint or textual-inversion embedding trained on a dataset uploaded
// here (train_dataset.js), queued on the same queue as generation (POST /opensd/v1/train), followed
// step by step: loss chart, sample images as they are written, cancel, resume of a stopped run. The
// result lands in the LoRA / embeddings / checkpoints folder and Generate's pickers list it.
import { api } from "../api.js";
import { lineChart } from "../chart.js";
import { clear, field, h, icon, nextId, toast } from "../dom.js";
import { number, select, setOptions } from "../form.js";
import { loadForm, saveForm } from "../persist.js";
import { EVENTS, emit, on } from "../shared.js";
import { datasetEditor } from "../train_dataset.js";

const KEY = "opensd.train";
const TYPES = [["lora", "LoRA"], ["dreambooth", "DreamBooth (full checkpoint)"], ["embedding", "Embedding (textual inversion)"]];
const LR = { lora: 1e-4, dreambooth: 2e-6, embedding: 5e-3 };
const SAVED_IN = { lora: "loras", embedding: "embeddings", dreambooth: "checkpoints" }; // model kind of the result
const FOLDER = { loras: "LoRA", embeddings: "embeddings", checkpoints: "checkpoints" };
const ACTIVE = new Set(["queued", "running"]);

function check(label, name) {
  return h("label", { class: "check" }, h("input", { type: "checkbox", name }), label);
}
const text = (name, attrs = {}) => h("input", { name, autocomplete: "off", ...attrs });

export async function mount(panel) {
  const dataset = datasetEditor(() => ready());
  const type = select("type", TYPES, "lora");
  const model = select("model", []);
  const why = h("span", { class: "muted start-why", id: nextId("start-why") });
  const start = h("button", { type: "submit", class: "primary", "aria-describedby": why.id }, icon("sparkle"), "Start training");
  const only = (kind, ...children) => h("div", { class: "grid2", "data-only": kind }, children);
  const form = h("form", { class: "stack", "aria-label": "Training settings" },
    h("div", { class: "grid2" }, field("Train", type), field("Base model", model),
      field("Save as", text("output", { required: true, maxlength: 120, value: "my-lora", spellcheck: "false" }))),
    h("div", { class: "grid2" },
      field("Steps", number("steps", { min: 1, max: 1000000, value: 200 })),
      field("Learning rate", h("input", { type: "number", name: "lr", min: 0, step: "any", value: LR.lora, inputmode: "decimal", required: true })),
      field("Batch size", number("batch_size", { min: 1, max: 64, value: 1 })),
      field("Resolution", h("input", { type: "number", name: "resolution", min: 8, max: 4096, step: 8, placeholder: "model's own", inputmode: "numeric" })),
      field("Seed", number("seed", { min: 0, max: 4294967295, value: 0 }))),
    only("lora", field("Rank", number("rank", { min: 1, max: 1024, value: 8 })),
      field("Alpha", number("alpha", { min: 0.01, max: 1024, step: "any", value: 4 }))),
    only("dreambooth", field("Instance prompt", text("instance_prompt", { placeholder: "a photo of sks dog" })),
      field("Class prompt (prior preservation)", text("class_prompt", { placeholder: "a photo of a dog (optional)" })),
      field("Class images", number("num_class_images", { min: 1, max: 10000, value: 50 }))),
    only("embedding", field("Prompt word", text("token", { placeholder: "the saved name" })),
      field("Start from word", text("init_word", { value: "*" })),
      field("Vectors", number("num_vectors", { min: 1, max: 75, value: 1 }))),
    field("Caption for images without one", text("caption", { placeholder: "e.g. sks emoji" })),
    h("div", { class: "grid2" },
      field("Sample every N steps (0: never)", number("sample_every", { min: 0, value: 50 })),
      field("Sample steps", number("sample_steps", { min: 1, max: 150, value: 20 })),
      field("Save state every N steps", number("save_every", { min: 1, value: 50 }))),
    field("Sample prompt", text("sample_prompt", { placeholder: "default: the first caption" })),
    h("div", { class: "toolbar" }, h("span", { "data-only": "lora dreambooth" }, check("Train the text encoder too", "train_text_encoder")),
      check("Random horizontal flips", "flip"), check("Replace an existing file", "overwrite")),
    h("div", { class: "toolbar" }, start, why));
  // Start waits for images; a disabled button says nothing by itself, so the note beside it does
  function ready() {
    start.disabled = !dataset.count();
    why.textContent = start.disabled ? "Add images to a dataset first (Dataset, above)." : "";
  }

  const title = h("h2", {}, "No training run selected");
  const line = h("p", { class: "muted", role: "status" }, "Start a run, or pick one below.");
  const bar = h("div");
  const cancel = h("button", { type: "button", hidden: true, onclick: cancelRun }, icon("stop"), "Cancel");
  const resume = h("button", { type: "button", hidden: true, onclick: resumeRun }, icon("recycle"), "Resume");
  const chart = lineChart("Training loss");
  const samples = h("div", { class: "results samples", role: "group", "aria-label": "Sample images" });
  const runs = h("ul", { class: "queue-list", "aria-label": "Training runs" });
  panel.append(h("div", { class: "gen-layout" },
    h("div", { class: "stack" }, dataset.element,
      h("section", { class: "card stack", "aria-label": "Settings" }, h("h2", {}, "Settings"), form)),
    h("div", { class: "gen-side" },
      h("section", { class: "card stack progress-card train-progress", "aria-label": "Training progress" }, title, line,
        h("div", { class: "bar" }, bar), h("div", { class: "toolbar" }, cancel, resume), chart.element,
        h("h3", {}, "Samples"), samples),
      h("section", { class: "card stack", "aria-label": "Runs" }, h("h2", {}, "Runs"), runs))));

  // --- the form ---
  // another type's fields are hidden and disabled: not sent, and a wrong or cleared value there
  // cannot block the browser's check of the form (which cannot point at a hidden field)
  const showType = () => form.querySelectorAll("[data-only]").forEach((el) => {
    el.hidden = !el.dataset.only.split(" ").includes(type.value);
    el.querySelectorAll("input, select, textarea").forEach((control) => { control.disabled = el.hidden; });
  });
  type.addEventListener("change", () => {
    form.elements.lr.value = LR[type.value];
    showType();
  });
  const checkpoints = await api.get("/opensd/v1/checkpoints").catch((e) => { toast(e.message, "error"); return { items: [] }; });
  setOptions(model, checkpoints.items.map((c) => [c.name, c.title]), checkpoints.current ?? undefined);
  loadForm(form, KEY);
  showType();
  form.addEventListener("change", () => saveForm(form, KEY));
  form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });

  function request() {
    const v = form.elements;
    const int = (name) => Math.trunc(Number(v[name].value));
    const body = { type: type.value, dataset: dataset.name(), model: model.value, output: v.output.value.trim(),
      overwrite: v.overwrite.checked, steps: int("steps"), lr: Number(v.lr.value), batch_size: int("batch_size"),
      seed: int("seed"), caption: v.caption.value, flip: v.flip.checked, sample_every: int("sample_every"),
      sample_prompt: v.sample_prompt.value, sample_steps: int("sample_steps"), save_every: int("save_every"),
      train_text_encoder: v.train_text_encoder.checked };
    if (v.resolution.value) body.resolution = int("resolution");
    if (type.value === "lora") Object.assign(body, { rank: int("rank"), alpha: Number(v.alpha.value) });
    if (type.value === "dreambooth") Object.assign(body, { instance_prompt: v.instance_prompt.value,
      class_prompt: v.class_prompt.value, num_class_images: int("num_class_images") });
    if (type.value === "embedding") Object.assign(body, { token: v.token.value.trim(), init_word: v.init_word.value,
      num_vectors: int("num_vectors") });
    return body;
  }

  async function submit() {
    start.disabled = true;
    try {
      const queued = await api.post("/opensd/v1/train", request());
      emit(EVENTS.JOB_QUEUED, { id: queued.job_id });
      await follow(queued.job_id);
      listRuns();
    } catch (e) { toast(e.message, "error"); } finally { ready(); }
  }

  // --- the selected run ---
  let current = null; // TrainStatus
  let inFlight = false;
  async function follow(id) {
    current = { job_id: id };
    await refresh();
  }
  async function refresh() {
    if (!current || inFlight) return;
    inFlight = true;
    try {
      show(await api.get(`/opensd/v1/train/jobs/${encodeURIComponent(current.job_id)}`));
    } catch (e) { toast(e.message, "error"); } finally { inFlight = false; }
  }
  function show(s) {
    current = s;
    title.textContent = s.label;
    const steps = s.steps ? ` · step ${s.step}/${s.steps}` : "";
    line.textContent = s.error ? `${s.status}${steps}: ${s.error}` : `${s.status}${steps}`;
    line.className = s.status === "failed" ? "error" : "muted";
    if (s.status === "done") line.textContent += ` · saved as ${s.output}; Generate's ${s.type === "dreambooth" ? "model" : s.type === "lora" ? "LoRA" : "embedding"} picker lists it`;
    bar.style.width = `${s.steps ? Math.round((100 * s.step) / s.steps) : 0}%`;
    cancel.hidden = !ACTIVE.has(s.status);
    resume.hidden = !s.resumable;
    chart.update(s.losses.map((p) => ({ x: p.step, y: p.loss })));
    const have = new Set([...samples.querySelectorAll("img")].map((img) => img.getAttribute("src")));
    if (s.samples.some((u) => !have.has(u)) || have.size !== s.samples.length) {
      clear(samples, s.samples.map((url) => h("img", { src: url, alt: `Sample ${url.split("/").pop()}`, class: "pixel" })));
    }
  }

  async function cancelRun() {
    try {
      await api.del(`/opensd/v1/jobs/${encodeURIComponent(current.job_id)}`);
      toast("Stopping: the run keeps its state, Resume continues it");
    } catch (e) { toast(e.message, "error"); }
  }
  async function resumeRun() {
    try {
      const queued = await api.post(`/opensd/v1/train/jobs/${encodeURIComponent(current.job_id)}/resume`);
      emit(EVENTS.JOB_QUEUED, { id: queued.job_id });
      await follow(queued.job_id);
      listRuns();
    } catch (e) { toast(e.message, "error"); }
  }

  async function listRuns() {
    let items = [];
    try { items = (await api.get("/opensd/v1/train/jobs")).items; } catch (e) { toast(e.message, "error"); }
    clear(runs, items.length ? items.map((s) => h("li", { "data-job": s.job_id },
      h("span", { class: `pill ${s.status}` }, s.status),
      h("div", { class: "label" }, s.label),
      h("button", { type: "button", "aria-label": `Show ${s.label}`, onclick: () => follow(s.job_id) }, "Show")))
      : h("li", { class: "muted" }, "No training runs yet."));
    if (!current && items.length) show(items[0]);
  }

  on(EVENTS.QUEUE, () => { if (current && ACTIVE.has(current.status ?? "queued")) refresh(); });
  on(EVENTS.JOB_DONE, async ({ id }) => {
    if (current?.job_id === id) await refresh();
    listRuns();
    const s = current?.job_id === id ? current : null;
    if (s?.status === "done") {
      toast(`Saved ${s.output} in the ${FOLDER[SAVED_IN[s.type]]} folder`);
      emit(EVENTS.MODELS_CHANGED, { kind: SAVED_IN[s.type], name: s.output });
    }
  });
  panel.addEventListener("opensd:shown", listRuns);
  await dataset.load();
  await listRuns();
}
