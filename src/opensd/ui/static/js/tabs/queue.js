// Queue: every job of both APIs and this UI (GET /opensd/v1/queue, refreshed by the poller), in run
// order, each with what it does (its task: txt2img, inpaint, extras, ...); cancel one (DELETE /opensd/v1/jobs/{id}), clear all waiting, interrupt or skip the running one.
import { api } from "../api.js";
import { clear, confirmDialog, h, icon, toast } from "../dom.js";
import { EVENTS, emit, on } from "../shared.js";

const short = (text, n = 40) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);
// "txt2img job "a red heart…" on worker gpu-2": which job a button acts on, for a screen reader and a tooltip
const named = (job) => `${job.task || job.kind} job "${short(job.label)}"${job.worker ? ` on worker ${job.worker}` : ""}`;

// One job. Its prompt is cut to one line with "…"; the prompt is a button (click, tap, Enter or Space)
// that shows it whole, and its tooltip is the whole prompt. `expanded`: the ids shown whole.
function row(job, expanded, ...controls) {
  const pos = job.position > 0 ? `#${job.position}` : job.position === 0 ? "▶" : "";
  const open = expanded.has(job.id);
  const text = h("button", { type: "button", class: "job-text", title: job.label, "aria-expanded": String(open),
    "data-key": `${job.id}:text`, onclick: () => {
      if (expanded.has(job.id)) expanded.delete(job.id); else expanded.add(job.id);
      li.classList.toggle("open", expanded.has(job.id));
      text.setAttribute("aria-expanded", String(expanded.has(job.id)));
    } }, job.label);
  const li = h("li", { "data-job": job.id, "data-status": job.status, class: open ? "open" : null },
    h("span", { class: "pos", "aria-label": job.position > 0 ? `position ${job.position}` : job.status }, pos),
    h("div", { class: "label" },
      h("span", { class: `pill ${job.status}` }, job.status),
      h("span", { class: "muted job-task" }, job.task || job.kind), text,
      job.error ? h("span", { class: "error job-error" }, job.error) : null),
    h("div", { class: "toolbar" }, controls));
  return li;
}

export async function mount(panel) {
  const running = h("ul", { class: "queue-list", "aria-label": "Running job" });
  const progress = h("span", { class: "muted" });
  const pending = h("ul", { class: "queue-list", "aria-label": "Waiting jobs" });
  const recent = h("ul", { class: "queue-list", "aria-label": "Finished jobs" });
  const clearAll = h("button", { type: "button", class: "danger", onclick: clearQueue, disabled: true },
    icon("trash"), "Clear queue");
  panel.append(h("div", { class: "stack" },
    h("section", { class: "card stack", "aria-label": "Running" }, h("h2", {}, "Running ", progress), running),
    h("section", { class: "card stack", "aria-label": "Waiting" },
      h("div", { class: "toolbar spread" }, h("h2", {}, "Waiting"), clearAll), pending),
    h("section", { class: "card stack", "aria-label": "Recently finished" }, h("h2", {}, "Recently finished"), recent)));

  async function cancel(job) {
    try {
      await api.del(`/opensd/v1/jobs/${encodeURIComponent(job.id)}`);
      emit(EVENTS.JOB_QUEUED, { id: job.id }); // poll again now
    } catch (e) { toast(e.message, "error"); }
  }
  async function clearQueue() {
    if (!(await confirmDialog("Cancel every waiting job? The running job continues.", "Clear queue"))) return;
    try {
      const r = await api.post("/opensd/v1/queue/clear");
      toast(`${r.cancelled} job${r.cancelled === 1 ? "" : "s"} cancelled`);
    } catch (e) { toast(e.message, "error"); }
  }
  const post = (path) => () => api.post(path).catch((e) => toast(e.message, "error"));

  const expanded = new Set(); // jobs whose whole prompt is shown, kept across the poller's renders
  let shown = "";
  const button = (job, action, ico, text, onclick) => h("button", { type: "button", onclick,
    "aria-label": `${text} ${named(job)}`, title: `${text} ${named(job)}`, "data-key": `${job.id}:${action}` }, icon(ico), text);
  function render(q) {
    const now = JSON.stringify([q.running_jobs, q.pending, q.recent].map((list) =>
      (list || []).map(({ step, steps, ...rest }) => rest))); // progress alone changes nothing here
    if (now === shown) return;
    shown = now;
    const focused = panel.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    // the oldest running job first (skip and interrupt act on it); with Ray workers others run beside it
    clear(running, q.running ? [row(q.running, expanded,
      button(q.running, "skip", "skip", "Skip", post("/sdapi/v1/skip")),
      button(q.running, "interrupt", "stop", "Interrupt", post("/sdapi/v1/interrupt"))),
      ...q.running_jobs.slice(1).map((j) => row(j, expanded, button(j, "interrupt", "stop", "Interrupt", () => cancel(j))))]
      : h("li", { class: "muted" }, "Nothing is running."));
    if (!q.running) progress.textContent = "";
    clear(pending, q.pending.length ? q.pending.map((j) => row(j, expanded,
      h("button", { type: "button", "aria-label": `Cancel job ${j.position}`, title: `Cancel ${named(j)}`,
        "data-key": `${j.id}:cancel`, onclick: () => cancel(j) }, icon("close"), "Cancel")))
      : h("li", { class: "muted" }, "No job is waiting."));
    clearAll.disabled = q.pending.length === 0;
    clear(recent, q.recent.length ? q.recent.map((j) => row(j, expanded)) : h("li", { class: "muted" }, "No finished jobs yet."));
    // a keyboard user's place survives the refresh (the same control of the same job, if still there)
    if (focused) panel.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
  }
  // filled now, not at the poller's next round (up to 3 s when idle, with empty lists until then)
  let polled = false;
  on(EVENTS.QUEUE, (q) => { polled = true; render(q); });
  api.get("/opensd/v1/queue").then((q) => polled || render(q)).catch((e) => toast(e.message, "error"));
  on(EVENTS.PROGRESS, (p) => {
    const s = p.state || {};
    progress.textContent = s.sampling_steps ? `· step ${s.sampling_step}/${s.sampling_steps}` : "";
  });
}
