// Light/dark: follows the OS until the user picks one with the toggle (remembered in localStorage).
import { clear, icon } from "./dom.js";

const KEY = "opensd.theme";

function current() {
  const set = document.documentElement.dataset.theme;
  if (set) return set;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

export function initTheme(button) {
  const saved = localStorage.getItem(KEY);
  if (saved === "light" || saved === "dark") document.documentElement.dataset.theme = saved;
  const paint = () => {
    const dark = current() === "dark";
    clear(button, icon(dark ? "sun" : "moon"));
    button.title = dark ? "Light theme" : "Dark theme";
  };
  button.addEventListener("click", () => {
    const next = current() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem(KEY, next);
    paint();
  });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", paint);
  paint();
}
