// The shell: tab bar, one <section role=tabpanel> per tab (mounted the first time it is shown),
// the URL hash (#gallery) as the current tab, the theme toggle and the queue/progress poller.
import { api, loginPage } from "./api.js";
import { clear, h, icon, toast } from "./dom.js";
import { startPoller } from "./poller.js";
import { EVENTS, on } from "./shared.js";
import { TABS } from "./tabs.js";
import { initTheme } from "./theme.js";

const nav = document.getElementById("tabs");
const panels = document.getElementById("panels");
const tabs = new Map(); // id -> {button, panel, mounted: Promise|null}

for (const tab of TABS) {
  const button = h("button", {
    type: "button", role: "tab", id: `tab-${tab.id}`, "aria-controls": `panel-${tab.id}`,
    "aria-selected": "false", tabindex: "-1", title: tab.label, onclick: () => show(tab.id),
  }, icon(tab.icon), h("span", { class: "tab-label" }, tab.label));
  const panel = h("section", {
    role: "tabpanel", id: `panel-${tab.id}`, "aria-labelledby": `tab-${tab.id}`, hidden: true, tabindex: "-1",
  });
  nav.append(button);
  panels.append(panel);
  tabs.set(tab.id, { ...tab, button, panel, mounted: null });
}

// ARIA tablist keys: arrows move to the previous/next tab (wrapping round), Home/End to the first/last.
nav.addEventListener("keydown", (e) => {
  const ids = [...tabs.keys()];
  const at = ids.indexOf(document.activeElement?.id?.replace("tab-", ""));
  if (at < 0) return;
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: ids.length - 1 }[e.key];
  if (to === undefined) return;
  e.preventDefault();
  const id = ids[(to + ids.length) % ids.length];
  show(id);
  tabs.get(id).button.focus();
});

async function show(id) {
  const tab = tabs.get(id) || tabs.get(TABS[0].id);
  for (const other of tabs.values()) {
    const active = other === tab;
    other.button.setAttribute("aria-selected", String(active));
    other.button.tabIndex = active ? 0 : -1;
    other.panel.hidden = !active;
  }
  if (location.hash !== `#${tab.id}`) history.replaceState(null, "", `#${tab.id}`);
  if (!tab.mounted) {
    clear(tab.panel); // empty, or a failed try's message
    tab.mounted = tab.load().then((module) => module.mount(tab.panel, { id: tab.id }));
    tab.mounted.catch((e) => failed(tab, e));
  }
  try { await tab.mounted; } catch { return; }
  tab.panel.dispatchEvent(new CustomEvent("opensd:shown"));
}

// A tab that could not load (most often: the server was stopped) says why and can be tried again.
function failed(tab, e) {
  console.error(e);
  tab.mounted = null;
  const offline = e.status === 0 || /dynamically imported module|importing a module script/i.test(e.message);
  const why = offline ? "the server cannot be reached (is opensd serve still running?)" : e.message;
  clear(tab.panel, h("div", { class: "card stack" }, h("p", { class: "error" }, `This tab could not be loaded: ${why}`),
    h("button", { type: "button", onclick: () => show(tab.id) }, icon("recycle"), "Try again")));
}

on(EVENTS.SHOW_TAB, ({ id }) => {
  if (tabs.has(id)) show(id);
  else toast(`The ${id} tab is not part of this version; the image is kept for it.`);
});
window.addEventListener("hashchange", () => show(location.hash.slice(1)));
// A field reached with Tab scrolls clear of the tab bar while it stays on screen (it wraps onto more
// lines in narrower windows; on a phone it scrolls away).
const topbar = document.querySelector(".topbar");
new ResizeObserver(() => {
  const sticky = getComputedStyle(topbar).position === "sticky";
  document.documentElement.style.scrollPaddingTop = `${sticky ? topbar.offsetHeight + 8 : 8}px`;
}).observe(topbar);
initTheme(document.getElementById("theme-toggle"));
const session = await api.get("/opensd/v1/session").catch(() => ({ authorized: true }));
if (!session.authorized) {
  location.replace(loginPage()); // before any call that would be refused
} else {
  startPoller(document.getElementById("busy"));
  show(location.hash.slice(1));
}
