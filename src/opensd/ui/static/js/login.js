// The login page: posts the token as JSON; the server answers with an HttpOnly session cookie.
const form = document.getElementById("login-form");

fetch("/opensd/v1/session", { credentials: "same-origin" }).then((r) => r.json())
  .then((s) => { if (s.authorized) location.replace("/"); })
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
    if (r.ok) { location.assign("/"); return; }
    const data = await r.json().catch(() => ({}));
    error.textContent = data.detail || `Sign-in failed (HTTP ${r.status})`;
  } catch {
    error.textContent = "The server cannot be reached.";
  }
});
