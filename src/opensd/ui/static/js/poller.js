// One poll loop for the page: the queue (/opensd/v1/queue) and, while a job runs, its progress
// (/sdapi/v1/progress: step, ETA, latent preview). Tabs listen to opensd:queue, opensd:progress and
// opensd:job-done instead of polling themselves. Fast while jobs exist, slow when idle.
import { api } from "./api.js";
import { emit, EVENTS, on } from "./shared.js";

const BUSY_MS = 500;
const IDLE_MS = 3000;

export function startPoller(badge) {
  let active = new Set(); // ids seen queued or running
  let timer = null;
  let inFlight = false;
  let again = false;

  async function poll() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    clearTimeout(timer);
    const before = new Set(active); // ids queued while this request is out are not judged by it
    try {
      const q = await api.get("/opensd/v1/queue");
      const now = new Set(q.pending.map((j) => j.id));
      for (const j of q.running_jobs) now.add(j.id); // several at once with Ray workers
      for (const id of before) if (!now.has(id)) emit(EVENTS.JOB_DONE, { id });
      active = new Set([...now, ...[...active].filter((id) => !before.has(id))]);
      emit(EVENTS.QUEUE, q);
      badge.textContent = active.size ? `${active.size} in queue` : "";
      if (q.running) emit(EVENTS.PROGRESS, await api.get("/sdapi/v1/progress"));
    } catch (e) {
      badge.textContent = e.status === 0 ? "offline" : "";
    }
    inFlight = false;
    if (again) { again = false; poll(); return; }
    timer = setTimeout(poll, active.size ? BUSY_MS : IDLE_MS);
  }

  on(EVENTS.JOB_QUEUED, ({ id }) => { active.add(id); poll(); });
  poll();
  return { poll };
}
