// The right-hand side of Generate and img2img/inpaint: the progress of this tab's jobs (step, ETA,
// live latent preview, interrupt, skip) and the images of its last job with their parameters,
// download and "send to" (img2img's own tab included: a result goes back onto its canvas). A script's
// grids come first (info.index_of_first_image of them), marked as grids, then its single images.
// The tab's queued jobs and its shown image are kept per browser tab (sessionStorage under `key`), so a
// reload mid-job still shows that job's progress and results, and the last result comes back.
import { api } from "./api.js";
import { clear, h, icon, toast } from "./dom.js";
import { EVENTS, emit, on, sendTo, shared, TARGETS } from "./shared.js";

// what the server says the job does before its first step (/sdapi/v1/progress state.phase, opensd's own)
const BEFORE_STEPS = {
  loading: "Loading the model",
  sampling: "Encoding the prompt, then the first step (a large image's first step can take minutes on a CPU)",
};
const fail = (e) => toast(e.message || String(e), "error");

// `upscale(image, seed, subseed)`: the tab's hires fix of a shown image (Generate's "Upscale"
// button, A1111's ✨: the image as the first pass); without it the button is not shown.
export function jobView({ upscale = null, key = null } = {}) {
  const status = h("p", { class: "muted", role: "status" }, "Idle");
  const bar = h("div");
  const preview = h("img", { alt: "Live preview of the running job", hidden: true });
  // usable while one of this tab's jobs runs (they act on the running job)
  const interrupt = h("button", { type: "button", disabled: true, onclick: () => api.post("/sdapi/v1/interrupt").catch(fail) },
    icon("stop"), "Interrupt");
  const skip = h("button", { type: "button", disabled: true, onclick: () => api.post("/sdapi/v1/skip").catch(fail) },
    icon("skip"), "Skip");
  const resultMain = h("div", { class: "result-main" });
  const resultThumbs = h("div", { class: "results", role: "group", "aria-label": "Images of the last job" });
  const infoBox = h("pre", { class: "infotext", hidden: true });
  const actions = h("div", { class: "toolbar", hidden: true });
  const progressCard = h("div", { class: "card stack progress-card", "aria-label": "Progress" },
    status, h("div", { class: "bar" }, bar), h("div", { class: "preview" }, preview),
    h("div", { class: "toolbar" }, interrupt, skip));
  const element = h("div", { class: "gen-side" }, progressCard,
    h("div", { class: "card stack", "aria-label": "Results" }, h("h2", {}, "Results"),
      resultMain, resultThumbs, actions, infoBox));

  const mine = new Set();
  let runningMine = false;
  // why the last request was refused or its job failed: kept in the status line until the next one
  let failure = "";
  const say = (text, problem = "") => {
    failure = problem;
    status.textContent = problem ? `${text}: ${problem}` : text;
    status.className = problem ? "error" : "muted";
  };
  on(EVENTS.QUEUE, (q) => {
    runningMine = Boolean(q.running && mine.has(q.running.id));
    interrupt.disabled = skip.disabled = !runningMine;
    if (runningMine) return;
    const waiting = q.pending.filter((j) => mine.has(j.id)).length;
    if (waiting) say(`${waiting} waiting`);
    else if (!failure) say("Idle");
    bar.style.width = "0";
    preview.hidden = true;
  });
  on(EVENTS.PROGRESS, (p) => {
    if (!runningMine) return;
    const s = p.state || {};
    const eta = p.eta_relative > 0 ? ` · ETA ${p.eta_relative.toFixed(1)} s` : "";
    const step = s.sampling_steps ? `Step ${s.sampling_step}/${s.sampling_steps}${eta}` : BEFORE_STEPS[s.phase] || "Starting";
    // a big image's step can take long on a CPU: say the click was heard
    say(s.interrupted ? `${step} · interrupting after this step` : step);
    bar.style.width = `${Math.round((p.progress || 0) * 100)}%`;
    if (p.current_image) { preview.src = `data:image/png;base64,${p.current_image}`; preview.hidden = false; }
  });
  on(EVENTS.JOB_DONE, ({ id }) => {
    if (!mine.has(id)) return;
    mine.delete(id);
    remember();
    api.get(`/opensd/v1/jobs/${encodeURIComponent(id)}`).then(finished, fail);
  });
  function finished(job) {
    if (job.status === "failed") {
      say("Generation failed", job.error || "unknown error");
      toast(`Generation failed: ${job.error || "unknown error"}`, "error");
    }
    else if (job.status === "cancelled") toast("The job was cancelled before it ran.");
    const files = job.result?.files || [];
    if (files.length) showResults(job);
    const unsupported = job.result?.info?.unsupported_fields || [];
    if (unsupported.length) toast(`Not applied by this server: ${unsupported.join(", ")}`, "error");
  }

  let shown = null; // {job, index}
  const imageUrl = (job, i) => `/opensd/v1/jobs/${encodeURIComponent(job.id)}/images/${i}`;
  const gridsOf = (job) => job.result.info?.index_of_first_image || 0;
  function showResults(job) {
    const n = job.result.files.length, grids = gridsOf(job);
    clear(resultThumbs, Array.from({ length: n }, (_, i) => h("button", {
      type: "button", "aria-label": i < grids ? `Grid ${i + 1}` : `Image ${i + 1 - grids}`, "aria-pressed": "false",
      class: i < grids ? "grid-thumb" : null, onclick: () => showImage(job, i),
    }, h("img", { src: imageUrl(job, i), alt: "" }))));
    showImage(job, 0);
  }
  // the seed of image i (a grid: its first cell's)
  const seedOf = (job, i) => (job.result.info?.all_seeds || [])[Math.max(0, i - gridsOf(job))];
  function showImage(job, i) {
    shown = { job, index: i };
    const info = job.result.info || {};
    const text = (info.infotexts || [])[i] || "";
    clear(resultMain, h("img", { src: imageUrl(job, i), alt: `Generated image: ${info.prompt || ""}`,
      "data-seed": seedOf(job, i), class: info.width <= 128 && i >= gridsOf(job) ? "pixel" : null })); // labels stay smooth
    [...resultThumbs.children].forEach((b, k) => b.setAttribute("aria-pressed", String(k === i)));
    infoBox.textContent = text;
    infoBox.hidden = !text;
    shared.lastImage = { url: imageUrl(job, i), infotext: text, name: `${job.id}-${i}.png` };
    clear(actions,
      h("a", { class: "button", href: imageUrl(job, i), download: `${job.id}-${i}.png` }, icon("download"), "Download"),
      upscale && i >= gridsOf(job) ? h("button", { type: "button", title: "Hires fix of this image with the hires "
        + "settings (its seed; the image is the first pass)", onclick: upscaleShown }, icon("expand"), "Upscale") : null,
      Object.entries(TARGETS).filter(([id]) => id !== "generate").map(([id, label]) =>
        h("button", { type: "button", onclick: () => sendImage(id) }, icon("send"), `Send to ${label}`)));
    actions.hidden = false;
    remember();
  }
  async function upscaleShown() {
    const { job, index } = shown;
    const subseeds = job.result.info?.all_subseeds || [];
    const blob = await fetch(imageUrl(job, index)).then((r) => r.blob()).catch(fail);
    if (blob) upscale(blob, seedOf(job, index), subseeds[index - gridsOf(job)]);
  }
  async function sendImage(target) {
    if (!shown) return;
    const blob = await fetch(imageUrl(shown.job, shown.index)).then((r) => r.blob());
    sendTo(target, { image: blob, name: `${shown.job.id}-${shown.index}.png`, params: null,
      infotext: shared.lastImage?.infotext || "" });
  }

  const storeKey = key && `${key}.jobs`;
  function remember() {
    if (!storeKey) return;
    const state = { mine: [...mine], shown: shown && { id: shown.job.id, index: shown.index } };
    try { sessionStorage.setItem(storeKey, JSON.stringify(state)); } catch { /* storage full or off: not kept */ }
  }
  // After a reload: the shown image again, and this tab's jobs (those that finished meanwhile show now).
  async function restore() {
    let state = {};
    try { state = JSON.parse(sessionStorage.getItem(storeKey) || "{}") || {}; } catch { state = {}; }
    const get = (id) => api.get(`/opensd/v1/jobs/${encodeURIComponent(id)}`).catch(() => null); // gone: forget it
    if (state.shown?.id) {
      const job = await get(state.shown.id);
      if (job?.result?.files?.length > state.shown.index) { showResults(job); showImage(job, state.shown.index); }
    }
    for (const id of Array.isArray(state.mine) ? state.mine : []) {
      const job = await get(id);
      if (!job) continue;
      if (["done", "failed", "cancelled", "interrupted"].includes(job.status)) finished(job);
      else { mine.add(id); emit(EVENTS.JOB_QUEUED, { id }); }
    }
    remember();
  }
  if (storeKey) restore();

  return {
    element,
    // Queue a request on `path` (/opensd/v1/txt2img or /img2img); its results show here when done.
    async submit(path, body) {
      try {
        const queued = await api.post(path, body);
        mine.add(queued.job_id);
        remember();
        emit(EVENTS.JOB_QUEUED, { id: queued.job_id });
        say(queued.position > 0 ? `Queued: position ${queued.position}` : "Starting");
      } catch (e) {
        say("Not queued", e.message || String(e));
        fail(e);
      }
      // on a phone the form fills the screen and the progress is below it: bring it into sight
      const { top, bottom } = progressCard.getBoundingClientRect();
      if (top >= innerHeight || bottom <= 0) progressCard.scrollIntoView({ block: "center" });
    },
    shownSeed: () => shown && seedOf(shown.job, shown.index),
  };
}
