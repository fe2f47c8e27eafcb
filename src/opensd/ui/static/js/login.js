// The login page: posts the token as JSON; the server answers with an HttpOnly session cookie.
// Afterwards it returns to `?next=` when that is a path on this origin (anything a browser could
// resolve to another host, "//host", "/\\host", "https:", tabs or newlines, falls back to "/"), so a
// crafted login link cannot send a signed-in user elsewhere.
const form = document.getElementById("login-form");

function returnTo() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  if (!next.startsWith("/") || next.startsWith("//") || next.includes("\\") || /[\x00-\x1f\x7f]/.test(next)) return "/";
  const url = new URL(next, location.origin);
  return url.origin === location.origin ? url.pathname + url.search + url.hash : "/";
}

fetch("/opensd/v1/session", { credentials: "same-origin" }).then((r) => r.json())
  .then((s) => { if (s.authorized) location.replace(returnTo()); })
  .catch(() => {});
const error = document.getElementById("login-error");

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  error.textContent = "";
  const token = new FormData(form).get("token");
  try {
    const r = await fetch("/opensd/v1/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ token }),
    });
    if (r.ok) { location.assign(returnTo()); return; }
    const data = await r.json().catch(() => ({}));
    error.textContent = data.detail || `Sign-in failed (HTTP ${r.status})`;
  } catch {
    error.textContent = "The server cannot be reached.";
  }
});
