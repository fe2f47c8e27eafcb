// The UI's only door to the server: documented JSON routes (/sdapi/v1, /opensd/v1). Every error
// becomes an ApiError carrying the server's one-line message; 401 sends the browser to the login page.

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// The login page returns here afterwards (it accepts only a path on this origin).
export function loginPage() {
  return "/login?next=" + encodeURIComponent(location.pathname + location.search + location.hash);
}

function messageOf(data, status) {
  if (data && typeof data === "object") {
    if (typeof data.message === "string") return data.message;
    if (typeof data.detail === "string") return data.detail;
  }
  if (typeof data === "string" && data) return data.slice(0, 300);
  return `HTTP ${status}`;
}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "the server cannot be reached");
  }
  if (response.status === 401 && location.pathname !== "/login") {
    location.assign(loginPage());
    throw new ApiError(401, "sign-in required");
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) throw new ApiError(response.status, messageOf(data, response.status));
  return data;
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body = {}) => request("POST", path, body),
  put: (path, body = {}) => request("PUT", path, body),
  del: (path) => request("DELETE", path),
};

// Query string from an object, skipping empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

export function fileToDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}
