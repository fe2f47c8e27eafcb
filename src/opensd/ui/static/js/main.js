// The shell: tab bar, one <section role=tabpanel> per tab (mounted the first time it is shown),
// the URL hash (#gallery) as the current tab, the theme toggle and the queue/progress poller.
import { api, loginPage } from "./api.js";
import { append, h, icon, toast } from "./dom.js";
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
    tab.mounted = tab.load().then((module) => module.mount(tab.panel, { id: tab.id }));
    tab.mounted.catch((e) => {
      console.error(e);
      append(tab.panel, h("p", { class: "error" }, `This tab failed to load: ${e.message}`));
    });
  }
  await tab.mounted;
  tab.panel.dispatchEvent(new CustomEvent("opensd:shown"));
}

on(EVENTS.SHOW_TAB, ({ id }) => {
  if (tabs.has(id)) show(id);
  else toast(`The ${id} tab is not part of this version; the image is kept for it.`);
});
window.addEventListener("hashchange", () => show(location.hash.slice(1)));
initTheme(document.getElementById("theme-toggle"));
const session = await api.get("/opensd/v1/session").catch(() => ({ authorized: true }));
if (!session.authorized) {
  location.replace(loginPage()); // before any call that would be refused
} else {
  startPoller(document.getElementById("busy"));
  show(location.hash.slice(1));
}
