// The tabs, in display order. Adding a tab = one module under tabs/ exporting
// `mount(panel, ctx)` plus one line here; `icon` names an icon in dom.js.
export const TABS = [
  { id: "generate", label: "Generate", icon: "sparkle", load: () => import("./tabs/generate.js") },
  { id: "img2img", label: "img2img", icon: "image", load: () => import("./tabs/img2img.js") },
  { id: "inpaint", label: "Inpaint", icon: "brush", load: () => import("./tabs/img2img.js") },
  { id: "controlnet", label: "ControlNet", icon: "layers", load: () => import("./tabs/controlnet.js") },
  { id: "extras", label: "Extras", icon: "expand", load: () => import("./tabs/extras.js") },
  { id: "gallery", label: "Gallery", icon: "grid", load: () => import("./tabs/gallery.js") },
  { id: "queue", label: "Queue", icon: "list", load: () => import("./tabs/queue.js") },
  { id: "pnginfo", label: "PNG info", icon: "info", load: () => import("./tabs/pnginfo.js") },
  { id: "models", label: "Models", icon: "box", load: () => import("./tabs/models.js") },
  { id: "train", label: "Train", icon: "chart", load: () => import("./tabs/train.js") },
  { id: "settings", label: "Settings", icon: "sliders", load: () => import("./tabs/settings.js") },
];

export const hasTab = (id) => TABS.some((t) => t.id === id);
