// Models: every model file by kind (GET /opensd/v1/models: family, size, hash and a header summary,
// read from the folders on every request, so Refresh is a rescan), metadata on demand, A1111 hashes
// computed on request (files under 1 GiB at once), and merge / convert as queued jobs whose result
// joins the list when it is saved.
import { api, query } from "../api.js";
import { clear, debounce, h, icon, toast } from "../dom.js";
import { familyLabel } from "../families.js";
import { toolForms } from "../model_tools.js";
import { EVENTS, emit, on } from "../shared.js";

export const KINDS = [["checkpoints", "Checkpoints"], ["vae", "VAEs"], ["loras", "LoRAs"], ["embeddings", "Embeddings"],
  ["controlnet", "ControlNets"]];
const AUTO_HASH_BYTES = 1 << 30;

export function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(n < 10 ? 2 : 1) : n} ${units[i]}`;
}

// Metadata as text: JSON values (kohya's ss_tag_frequency, ss_bucket_info, a merge recipe) indented.
function metadataText(meta) {
  const keys = Object.keys(meta).sort();
  if (!keys.length) return "No metadata in this file.";
  return keys.map((k) => {
    let v = meta[k];
    if (/^[[{]/.test(v)) { try { v = JSON.stringify(JSON.parse(v), null, 2); } catch { /* plain text */ } }
    return `${k}: ${v}`;
  }).join("\n");
}

export async function mount(panel) {
  const filter = h("input", { type: "search", placeholder: "Filter by name", "aria-label": "Filter models by name" });
  const status = h("span", { class: "muted", role: "status" });
  const where = h("p", { class: "muted models-folder" }); // which folder is read, or how to set one
  const sections = new Map(KINDS.map(([kind, title]) => {
    const count = h("span", { class: "muted" });
    const list = h("ul", { class: "model-list", "aria-label": title });
    const section = h("section", { class: "card stack", "data-kind": kind }, h("h2", {}, title, " ", count), list);
    return [kind, { section, count, list }];
  }));
  const tools = toolForms({ onQueued: track });
  panel.append(h("div", { class: "models-layout" },
    h("div", { class: "stack" },
      h("div", { class: "toolbar" },
        h("button", { type: "button", onclick: () => emit(EVENTS.MODELS_CHANGED, { kind: null }) }, icon("recycle"), "Refresh"),
        filter, status),
      where, [...sections.values()].map((s) => s.section)),
    h("div", { class: "stack" }, tools.element)));

  let data = null;
  const hashing = new Set();

  async function load() {
    try {
      data = await api.get("/opensd/v1/models");
    } catch (e) { toast(e.message, "error"); return; }
    render();
    tools.setCheckpoints(data.checkpoints.map((m) => m.name));
    status.textContent = `${KINDS.map(([k]) => data[k].length).reduce((a, b) => a + b)} files`;
    where.textContent = data.models_dir ? `Models folder: ${data.models_dir}`
      : "No models folder is set, so only the built-in models and models made here are listed. To use your own, "
        + "start the server with: opensd serve --models-dir PATH (an A1111 or ComfyUI models folder).";
    hashSmallFiles(data);
  }

  async function hashSmallFiles(listed) { // one at a time, in the background
    for (const [kind] of KINDS) {
      for (const m of listed[kind]) if (!m.hash && m.size < AUTO_HASH_BYTES) await computeHash(kind, m);
    }
  }

  function render() {
    const needle = filter.value.trim().toLowerCase();
    for (const [kind] of KINDS) {
      const { count, list } = sections.get(kind);
      const shown = data[kind].filter((m) => m.name.toLowerCase().includes(needle));
      count.textContent = `(${data[kind].length})`;
      clear(list, shown.length ? shown.map((m) => row(kind, m))
        : h("li", { class: "muted" }, data[kind].length ? "None matches the filter." : data.models_dir ? "None in the models folder." : "None."));
    }
  }

  function row(kind, m) {
    const hash = h("span", { class: "hash" });
    showHash(kind, m, hash);
    const meta = h("pre", { class: "infotext", hidden: true });
    const more = h("button", { type: "button", "aria-expanded": "false", "aria-label": `Metadata of ${m.name}`,
      onclick: () => toggleMeta(kind, m, meta, more) }, "Metadata");
    return h("li", { "data-name": m.name },
      h("div", { class: "model-head" },
        h("span", { class: "model-name" }, m.name),
        h("span", { class: "toolbar" },
          m.family ? h("span", { class: "pill family" }, familyLabel(m.family)) : h("span", { class: "pill" }, "family unknown"),
          h("span", { class: "pill" }, bytes(m.size)), hash, more)),
      m.detail ? h("span", { class: "muted small" }, m.detail) : null,
      meta);
  }

  function showHash(kind, m, cell) {
    if (m.hash) clear(cell, h("code", { title: "AUTOMATIC1111's short hash" }, m.hash));
    else clear(cell, h("button", { type: "button", class: "small", "aria-label": `Compute the hash of ${m.name}`,
      onclick: () => computeHash(kind, m) }, "Hash"));
  }

  async function computeHash(kind, m) {
    if (hashing.has(`${kind}/${m.name}`)) return;
    hashing.add(`${kind}/${m.name}`);
    try {
      m.hash = (await api.post("/opensd/v1/models/hash", { kind, name: m.name })).hash;
      const cell = [...sections.get(kind).list.children].find((li) => li.dataset.name === m.name)?.querySelector(".hash");
      if (cell) showHash(kind, m, cell);
    } catch (e) {
      toast(e.message, "error");
    } finally { hashing.delete(`${kind}/${m.name}`); }
  }

  async function toggleMeta(kind, m, pre, button) {
    const open = pre.hidden;
    button.setAttribute("aria-expanded", String(open));
    pre.hidden = !open;
    if (!open || pre.textContent) return;
    try {
      const info = await api.get(`/opensd/v1/models/${kind}/info${query({ name: m.name })}`);
      pre.textContent = metadataText(info.metadata);
    } catch (e) { pre.textContent = e.message; }
  }

  // --- jobs: progress while they run, the list again when they end ---
  const jobs = new Map(); // id -> what it makes
  function track(job, what) {
    jobs.set(job.job_id, what);
    tools.progress(what, "queued", null);
    emit(EVENTS.JOB_QUEUED, { id: job.job_id });
  }
  on(EVENTS.PROGRESS, (p) => {
    const id = (p.state?.job || "").replace(/^models:/, "");
    if (jobs.has(id)) tools.progress(jobs.get(id), `step ${p.state.sampling_step}/${p.state.sampling_steps}`, p.progress);
  });
  on(EVENTS.JOB_DONE, async ({ id }) => {
    if (!jobs.has(id)) return;
    const what = jobs.get(id);
    jobs.delete(id);
    const job = await api.get(`/opensd/v1/jobs/${encodeURIComponent(id)}`).catch(() => null);
    if (job?.status === "done") {
      tools.progress(what, "saved", 1);
      toast(`Saved ${job.result.output} in the checkpoints folder`);
      emit(EVENTS.MODELS_CHANGED, { kind: "checkpoints", name: job.result.output });
    } else {
      tools.progress(what, job ? `${job.status}: ${job.error || ""}` : "ended", null, true);
    }
  });
  on(EVENTS.MODELS_CHANGED, () => load());
  filter.addEventListener("input", debounce(render, 150));
  panel.addEventListener("opensd:shown", () => { if (data) load(); });
  await load();
}
