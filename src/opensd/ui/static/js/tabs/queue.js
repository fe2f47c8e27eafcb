// Queue: every job of both APIs and this UI (GET /opensd/v1/queue, refreshed by the poller), in run
// order, each with what it does (its task: txt2img, inpaint, extras, ...); cancel one (DELETE /opensd/v1/jobs/{id}), clear all waiting, interrupt or skip the running one.
import { api } from "../api.js";
import { clear, confirmDialog, h, icon, toast } from "../dom.js";
import { EVENTS, emit, on } from "../shared.js";

function row(job, ...controls) {
  const pos = job.position > 0 ? `#${job.position}` : job.position === 0 ? "▶" : "";
  return h("li", { "data-job": job.id, "data-status": job.status },
    h("span", { class: "pos", "aria-label": job.position > 0 ? `position ${job.position}` : job.status }, pos),
    h("div", { class: "label" },
      h("span", { class: `pill ${job.status}` }, job.status), " ",
      h("span", { class: "muted job-task" }, job.task || job.kind), " ", job.label,
      job.error ? h("span", { class: "error job-error" }, job.error) : null),
    h("div", { class: "toolbar" }, controls));
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

  function render(q) {
    // the oldest running job first (skip and interrupt act on it); with Ray workers others run beside it
    clear(running, q.running ? [row(q.running,
      h("button", { type: "button", onclick: post("/sdapi/v1/skip") }, icon("skip"), "Skip"),
      h("button", { type: "button", onclick: post("/sdapi/v1/interrupt") }, icon("stop"), "Interrupt")),
      ...q.running_jobs.slice(1).map((j) => row(j,
        h("button", { type: "button", onclick: () => cancel(j) }, icon("stop"), "Interrupt")))]
      : h("li", { class: "muted" }, "Nothing is running."));
    if (!q.running) progress.textContent = "";
    clear(pending, q.pending.length ? q.pending.map((j) => row(j,
      h("button", { type: "button", "aria-label": `Cancel job ${j.position}`, onclick: () => cancel(j) }, icon("close"), "Cancel")))
      : h("li", { class: "muted" }, "No job is waiting."));
    clearAll.disabled = q.pending.length === 0;
    clear(recent, q.recent.length ? q.recent.map((j) => row(j)) : h("li", { class: "muted" }, "No finished jobs yet."));
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
