// Gallery: every image the server made, newest first, paged on the server (48 a page) and searched
// by prompt; a full view with its parameters, reuse, send-to, download and delete.
import { api, query } from "../api.js";
import { clear, confirmDialog, debounce, h, icon, paramsTable, toast } from "../dom.js";
import { EVENTS, on, sendTo, shared, TARGETS } from "../shared.js";

const LIMIT = 48;

export async function mount(panel) {
  const search = h("input", { type: "search", placeholder: "Search prompts", "aria-label": "Search prompts", name: "q" });
  const count = h("span", { class: "muted", role: "status" });
  const grid = h("div", { class: "thumbs" });
  const prev = h("button", { type: "button", onclick: () => go(offset - LIMIT) }, "Previous");
  const next = h("button", { type: "button", onclick: () => go(offset + LIMIT) }, "Next");
  const where = h("span", { class: "muted" });
  panel.append(
    h("div", { class: "toolbar" }, icon("search"), search, count),
    h("div", { class: "card gallery-card" }, grid, h("nav", { class: "pager", "aria-label": "Pages" }, prev, where, next)));

  let offset = 0;
  let total = 0;
  let items = [];

  async function load() {
    try {
      const page = await api.get(`/opensd/v1/gallery${query({ offset, limit: LIMIT, q: search.value.trim() })}`);
      total = page.total;
      items = page.items;
      if (!items.length && offset > 0 && total > 0) return go(Math.max(0, offset - LIMIT));
      render();
    } catch (e) { toast(e.message, "error"); }
  }

  function render() {
    count.textContent = `${total} image${total === 1 ? "" : "s"}`;
    clear(grid, items.length ? items.map((item, i) => h("figure", {},
      h("button", { type: "button", "aria-label": `Open image ${item.id}: ${item.prompt}`, onclick: () => open(i), "data-id": item.id },
        h("img", { src: item.thumb_url, alt: "", loading: "lazy", width: 150, height: 150,
          class: Math.max(item.width, item.height) <= 128 ? "pixel" : null }),
        h("figcaption", {}, item.prompt || "(no prompt)"))))
      : h("p", { class: "muted" }, search.value ? "No image's prompt contains this text." : "No images yet: generate one."));
    const last = Math.min(offset + items.length, total);
    where.textContent = total ? `${offset + 1}–${last} of ${total}` : "";
    prev.disabled = offset === 0;
    next.disabled = last >= total;
  }

  function go(to) { offset = Math.max(0, to); return load(); }

  search.addEventListener("input", debounce(() => go(0), 300));
  panel.addEventListener("opensd:shown", () => load());
  on(EVENTS.JOB_DONE, debounce(() => { if (offset === 0 && !panel.hidden) load(); }, 300));

  // --- the full view ---
  const dialog = h("dialog", { "aria-label": "Image" });
  document.body.append(dialog);
  let at = -1;

  async function open(i) {
    at = i;
    const item = items[i];
    let detail;
    try { detail = await api.get(`/opensd/v1/gallery/${item.id}`); } catch (e) { toast(e.message, "error"); return; }
    shared.lastImage = { url: detail.image_url, infotext: detail.infotext, name: `opensd-${detail.id}.png`, params: detail.request };
    const send = (target) => async () => {
      const blob = await fetch(detail.image_url).then((r) => r.blob());
      dialog.close();
      sendTo(target, { image: blob, name: `opensd-${detail.id}.png`, params: detail.request, infotext: detail.infotext });
    };
    clear(dialog,
      h("div", { class: "dialog-head" },
        h("h2", {}, `Image ${detail.id}`, h("span", { class: "muted" }, ` · ${detail.width}×${detail.height} · ${new Date(detail.created * 1000).toLocaleString()}`)),
        h("button", { type: "button", class: "icon-button", "aria-label": "Close", onclick: () => dialog.close() }, icon("close"))),
      h("div", { class: "dialog-body" },
        h("div", {}, h("img", { src: detail.image_url, alt: detail.prompt, class: detail.width <= 128 ? "full pixel" : "full" })),
        h("div", { class: "stack" },
          h("div", { class: "toolbar" },
            h("button", { type: "button", class: "primary", disabled: !detail.request,
              onclick: () => { dialog.close(); sendTo("generate", { params: detail.request, notes: detail.notes }); } },
              icon("recycle"), "Reuse parameters"),
            Object.entries(TARGETS).filter(([id]) => id !== "generate").map(([id, label]) =>
              h("button", { type: "button", onclick: send(id) }, icon("send"), label)),
            h("a", { class: "button", href: detail.image_url, download: `opensd-${detail.id}.png` }, icon("download"), "Download"),
            h("button", { type: "button", class: "danger", onclick: () => remove(detail) }, icon("trash"), "Delete")),
          detail.infotext ? paramsTable(detail.parameters) : h("p", { class: "muted" }, "This image carries no A1111 parameters."),
          detail.notes.map((n) => h("p", { class: "muted" }, n)),
          detail.infotext ? h("pre", { class: "infotext", "aria-label": "Parameters text" }, detail.infotext) : null)));
    if (!dialog.open) dialog.showModal();
  }

  dialog.addEventListener("keydown", (e) => {
    if (e.target.closest("input, textarea, select")) return;
    if (e.key === "ArrowRight" && at + 1 < items.length) open(at + 1);
    if (e.key === "ArrowLeft" && at > 0) open(at - 1);
  });

  async function remove(detail) {
    if (!(await confirmDialog(`Delete image ${detail.id}? Its file is removed from the outputs folder.`))) return;
    try {
      await api.del(`/opensd/v1/gallery/${detail.id}`);
      dialog.close();
      toast(`Image ${detail.id} deleted`);
      load();
    } catch (e) { toast(e.message, "error"); }
  }

  await load();
}
