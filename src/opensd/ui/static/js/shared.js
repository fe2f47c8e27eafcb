// State shared by the tabs and the events they talk through. A tab never imports another tab.
//
// Events (on `bus`, detail in braces):
//   opensd:show-tab   {id}                       switch to a tab (main.js)
//   opensd:send       {target, image, params}    an image (and/or parameters) sent to tab `target`;
//                                                also kept in shared.sent[target] until taken, so a tab
//                                                mounted later still receives it (see take()).
//   opensd:queue      {running, pending, ...}    every queue poll (poller.js)
//   opensd:progress   /sdapi/v1/progress answer  while a job runs (poller.js)
//   opensd:job-done   {id}                       a job left the queue (finished, failed or cancelled)
//   opensd:job-queued {id}                       a tab queued a job (the poller polls at once)
//   opensd:models-changed {kind, name}           a model file was added (merge, convert, training):
//                                                model pickers list the folders again

export const bus = new EventTarget();
export const EVENTS = {
  SHOW_TAB: "opensd:show-tab", SEND: "opensd:send", QUEUE: "opensd:queue", PROGRESS: "opensd:progress",
  JOB_DONE: "opensd:job-done", JOB_QUEUED: "opensd:job-queued", MODELS_CHANGED: "opensd:models-changed",
};
// Tab ids the "send to" buttons name; tabs added later register under these ids.
export const TARGETS = { generate: "Generate", img2img: "img2img", inpaint: "Inpaint", controlnet: "ControlNet",
  extras: "Extras" };

export const shared = {
  sent: {},        // target tab id -> {image: Blob|null, name, params: txt2img request|null, infotext}
  lastImage: null, // the image last shown in a result or gallery view: {blob?, url, name, params, infotext}
};

export function emit(name, detail = {}) { bus.dispatchEvent(new CustomEvent(name, { detail })); }

export function on(name, fn) {
  const handler = (e) => fn(e.detail);
  bus.addEventListener(name, handler);
  return () => bus.removeEventListener(name, handler);
}

export function sendTo(target, payload) {
  shared.sent[target] = payload;
  emit(EVENTS.SEND, { target, ...payload });
  emit(EVENTS.SHOW_TAB, { id: target });
}

// What was sent to `target` and not yet taken (a tab calls this when it mounts and on opensd:send).
export function take(target) {
  const payload = shared.sent[target];
  delete shared.sent[target];
  return payload || null;
}
