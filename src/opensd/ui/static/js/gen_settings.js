// The generation settings that Generate and img2img/inpaint share: prompt and negative prompt (token
// counter; LoRA and embedding pickers, styles), model, VAE, sampler, schedule, steps, CFG, size with the
// model family's presets, seed (random, reuse), batch, CLIP skip, the variation seed, the Advanced card
// (sampler knobs, refiner) and the active ControlNet units; the image CFG scale only while the model
// is an edit model (InstructPix2Pix, CosXL Edit); the Reference images card (reference_images.js) only
// while the model edits with reference images (Flux.1 Kontext, FLUX.2, Qwen-Image-Edit). A tab puts the cards in its own <form>
// (which remembers the named controls), adds its own fields and builds its request from request().
import { advancedSettings } from "./advanced_settings.js";
import { api } from "./api.js";
import { clear, field, h, icon, toast } from "./dom.js";
import { activeUnits, CHANGED, controlnetFields } from "./controlnet_units.js";
import { INPAINT_MASK_NOTE, controlnetFamilies, controlnetStem, familiesByStem, familyLabel, maskTakers, misfit }
  from "./families.js";
import { choose, number, setOptions, slider, syncSliders } from "./form.js";
import { keepForm, loadForm } from "./persist.js";
import { promptEditor } from "./prompt_editor.js";
import { referenceCard } from "./reference_images.js";
import { emit, EVENTS, on } from "./shared.js";
import { stylesPicker } from "./styles_picker.js";

const RATIOS = [[1, 1], [3, 4], [4, 3], [2, 3], [3, 2], [9, 16], [16, 9]];

const round8 = (v) => Math.max(8, Math.round(v / 8) * 8);
const touch = (el) => el.dispatchEvent(new Event("input", { bubbles: true })); // the form remembers it

// `img2img`: whether ControlNet units may fall back to the init image; `shownSeed()`: the seed of the
// image the tab shows (for "reuse seed"); `sizeFollowsModel`: a model change sets its native size;
// `inpaint`: the Inpaint tab, whose mask the server gives units of ControlNets that take one.
export async function generationSettings({ img2img = false, inpaint = false, shownSeed = () => undefined,
  sizeFollowsModel = true } = {}) {
  const stepsField = slider("Sampling steps", "steps", { min: 1, max: 150, value: 20 });
  const steps = () => Number(stepsField.querySelector("input[name=steps]").value) || 20;
  const prompt = promptEditor({ label: "Prompt", name: "prompt", placeholder: "Describe the picture, e.g. a red heart, noto emoji style", getSteps: steps });
  const negative = promptEditor({ label: "Negative prompt", name: "negative_prompt", getSteps: steps });
  const model = h("select", { name: "model" });
  const vae = h("select", { name: "vae" });
  const sampler = h("select", { name: "sampler" });
  const scheduler = h("select", { name: "scheduler" });
  const width = number("width", { min: 8, max: 4096, step: 8, value: 512 });
  const height = number("height", { min: 8, max: 4096, step: 8, value: 512 });
  const seed = number("seed", { min: -1, step: 1, value: -1 });
  const nIter = number("n_iter", { min: 1, max: 100, value: 1 });
  const batchSize = number("batch_size", { min: 1, max: 8, value: 1 });
  const clipSkip = number("clip_skip", { min: 1, max: 12, value: 1 });
  const variation = h("input", { type: "checkbox", name: "variation" });
  const subseed = number("subseed", { min: -1, value: -1 });
  const strengthField = slider("Variation strength", "subseed_strength", { min: 0, max: 1, step: 0.01, value: 0 });
  const presets = h("div", { class: "presets", role: "group", "aria-label": "Size presets" });
  const pickers = h("div", { class: "stack" });
  const controlnet = h("p", { class: "muted controlnet-note", role: "status" });
  // how strongly an edit model keeps to the given image (A1111's image_cfg_scale; 1 = not at all)
  const imageCfgField = slider("Image CFG scale", "image_cfg_scale", { min: 0, max: 3, step: 0.05, value: 1.5 });
  const imageCfg = imageCfgField.querySelector("input[name=image_cfg_scale]");
  imageCfgField.hidden = true;
  // Generate: the size can come from reference 1 (about the model's native area at most, whole 16-pixel steps)
  const references = referenceCard({ onSize: sizeFollowsModel ? (w, hh) => {
    const scale = Math.min(1, nativeSize() / Math.sqrt(w * hh));
    setSize(Math.max(16, Math.floor(w * scale / 16) * 16), Math.max(16, Math.floor(hh * scale / 16) * 16));
  } : null });

  const promptCard = h("div", { class: "card stack" }, prompt.element, negative.element, pickers);
  const settingsCard = h("div", { class: "card stack" },
    h("div", { class: "grid2" }, field("Model", model), field("VAE", vae),
      field("Sampler", sampler), field("Schedule type", scheduler)),
    stepsField,
    slider("CFG scale", "cfg_scale", { min: 1, max: 30, step: 0.5, value: 7 }),
    imageCfgField,
    h("div", { class: "row" }, field("Width", width),
      h("button", { type: "button", class: "icon-button", "aria-label": "Swap width and height",
        onclick: () => { [width.value, height.value] = [height.value, width.value]; touch(width); } }, icon("swap")),
      field("Height", height)),
    presets,
    h("div", { class: "row" },
      field("Seed (-1: random)", seed),
      h("button", { type: "button", class: "icon-button", "aria-label": "Random seed",
        onclick: () => { seed.value = -1; touch(seed); } }, icon("dice")),
      h("button", { type: "button", class: "icon-button", "aria-label": "Reuse the seed of the shown image",
        onclick: reuseSeed }, icon("recycle"))),
    h("div", { class: "grid2" },
      field("Batch count", nIter), field("Batch size", batchSize), field("CLIP skip", clipSkip)),
    controlnet);
  const variationCard = h("details", { class: "card" }, h("summary", {}, "Variation seed"),
    h("div", { class: "stack" },
      h("label", { class: "check" }, variation, "Use a variation seed"),
      field("Variation seed (-1: random)", subseed), strengthField));

  // --- data from the server ---
  let [ckpts, vaes, samplers, schedulers, loras, embeddings, styleList, options, scripts, hypernets, folders] =
    await Promise.all([
      api.get("/opensd/v1/checkpoints"), api.get("/sdapi/v1/sd-vae"), api.get("/sdapi/v1/samplers"),
      api.get("/sdapi/v1/schedulers"), api.get("/sdapi/v1/loras"), api.get("/sdapi/v1/embeddings"),
      api.get("/sdapi/v1/prompt-styles"), api.get("/sdapi/v1/options"), api.get("/sdapi/v1/script-info"),
      api.get("/sdapi/v1/hypernetworks"), api.get("/opensd/v1/models"),
    ]).catch((e) => {
      toast(e.message, "error");
      return [{ items: [] }, [], [], [], [], { loaded: {} }, [], {}, [], [], {}];
    });
  let checkpoints = ckpts.items;
  schedulers = schedulers.filter((s) => s.name !== "automatic"); // the pickers' own first entry is Automatic
  let cnFamilies = controlnetFamilies(folders), cnMasked = maskTakers(folders);
  let loraFamilies = familiesByStem(folders, "loras");
  const styles = stylesPicker(styleList, prompt, negative);
  pickers.before(styles.element);
  // the refiner's controls only where the server has A1111's always-on Refiner script
  const advanced = advancedSettings({ refiner: scripts.some((s) => s.is_alwayson && s.name === "refiner") });
  const checkpointViews = [advanced]; // each has setCheckpoints(names), called again when the list changes
  advanced.setCheckpoints(checkpoints.map((c) => c.name));
  setOptions(model, checkpoints.map((c) => [c.name, c.title]), ckpts.current ?? undefined);
  setOptions(vae, [["Automatic", "Automatic"], ["None", "None (the checkpoint's own)"],
    ...vaes.map((v) => [v.model_name, v.model_name])], options.sd_vae);
  setOptions(sampler, samplers.map((s) => [s.name, s.name]), "Euler");
  setOptions(scheduler, [["", "Automatic"], ...schedulers.map((s) => [s.name, s.label])]);
  let lists = [loras, embeddings, hypernets]; // what the pickers show, again after a change of model

  // --- behaviour ---
  const familyOf = (name) => checkpoints.find((c) => c.name === name);
  showPickers(...lists);
  const nativeSize = () => familyOf(model.value)?.resolution ?? 512;
  function setSize(w, hh = w) { width.value = w; height.value = hh; touch(width); }
  function showPresets() {
    const r = nativeSize();
    clear(presets, RATIOS.map(([a, b]) => {
      const w = round8(r * Math.sqrt(a / b)), hh = round8(r * Math.sqrt(b / a));
      return h("button", { type: "button", title: `${a}:${b}`, onclick: () => setSize(w, hh) }, `${w}×${hh}`);
    }));
  }
  const isEdit = () => Boolean(familyOf(model.value)?.edit);
  function showImageCfg() {
    imageCfgField.hidden = !isEdit();
    references.setModel(familyOf(model.value));
  }
  // what the shown model's family recommends (CFG, steps; a family with its own schedule, as the DiT
  // families: Automatic, which runs it): a change to a model whose family recommends otherwise sets them,
  // as Forge's UI presets do; values restored or reused are kept
  const advice = () => familyOf(model.value)?.recommended ?? null;
  const cfgInput = settingsCard.querySelector("input[name=cfg_scale]");
  let advised = null;
  function followAdvice() {
    const next = advice();
    if (next && (next.cfg_scale !== advised?.cfg_scale || next.steps !== advised?.steps)) {
      const stepsInput = stepsField.querySelector("input[name=steps]");
      stepsInput.value = next.steps;
      cfgInput.value = next.cfg_scale;
      const ownSchedule = next.scheduler && scheduler.value !== "";
      if (ownSchedule) scheduler.value = ""; // Automatic runs the schedule the family was trained (or distilled) for
      syncSliders(settingsCard);
      touch(stepsInput);
      toast(`${next.label}: CFG ${next.cfg_scale}, ${next.steps} steps${ownSchedule ? ", schedule Automatic" : ""}`);
    }
    advised = next;
  }
  model.addEventListener("change", () => {
    if (sizeFollowsModel) setSize(nativeSize());
    showPresets();
    showImageCfg();
    followAdvice();
    showControlNet();
    showPickers(...lists);
  });
  // each LoRA with the family it was made for; one the selected model cannot take says so
  function loraEntry(l) {
    const name = l.alias || l.name, family = loraFamilies[l.name], bad = misfit(family, familyOf(model.value)?.family);
    const label = !family ? name : `${name} · ${familyLabel(family)}${bad ? " (not for this model)" : ""}`;
    return [label, () => prompt.insert(`<lora:${name}:1>`), bad ? `Made for ${familyLabel(family)} models` : undefined];
  }
  function showPickers(loras, embeddings, hypernets) {
    lists = [loras, embeddings, hypernets];
    clear(pickers,
      picker("LoRA", loras.map(loraEntry)),
      picker("Embeddings", Object.keys(embeddings.loaded || {}).map((n) => [n, () => prompt.insert(n)])),
      ...(hypernets.length // an A1111-era add-on: shown only where the folder has some
        ? [picker("Hypernetworks", hypernets.map((n) => [n.name, () => prompt.insert(`<hypernet:${n.name}:1>`)]))]
        : []));
  }
  on(EVENTS.MODELS_CHANGED, async () => { // a model was saved (merge, training) or the folders rescanned
    try {
      const [c, l, e, hn, f] = await Promise.all([api.get("/opensd/v1/checkpoints"), api.get("/sdapi/v1/loras"),
        api.get("/sdapi/v1/embeddings"), api.get("/sdapi/v1/hypernetworks"), api.get("/opensd/v1/models")]);
      checkpoints = c.items;
      cnFamilies = controlnetFamilies(f);
      cnMasked = maskTakers(f);
      loraFamilies = familiesByStem(f, "loras");
      showControlNet();
      setOptions(model, checkpoints.map((x) => [x.name, x.title]), model.value);
      showImageCfg();
      for (const view of checkpointViews) view.setCheckpoints(checkpoints.map((x) => x.name));
      showPickers(l, e, hn);
    } catch (err) { toast(err.message, "error"); }
  });
  function picker(title, entries) {
    const list = entries.length
      ? entries.map(([label, act, misfitTitle]) => h("button", { type: "button", onclick: act,
        ...(misfitTitle ? { class: "misfit", title: misfitTitle } : {}) }, label))
      : [h("span", { class: "muted" }, folders.models_dir === null // the server has no models folder
        ? "no models folder: start the server with opensd serve --models-dir PATH" : "none found in the models folder")];
    return h("details", {}, h("summary", {}, `${title} (${entries.length})`), h("div", { class: "picker-list" }, list));
  }
  function reuseSeed() {
    const s = shownSeed();
    if (s === undefined) { toast("No image shown yet: generate one first."); return; }
    seed.value = s;
    touch(seed);
  }
  // the active units, and those whose ControlNet was made for another family than the model's (the
  // server refuses them: said here before Generate, not only as a failed job)
  function showControlNet() {
    const active = activeUnits(img2img);
    const family = familyOf(model.value)?.family;
    const misfits = active.filter((u) => misfit(cnFamilies[controlnetStem(u.model)], family));
    const masks = (u) => inpaint && cnMasked.has(controlnetStem(u.model)) ? `, ${INPAINT_MASK_NOTE}` : "";
    clear(controlnet, active.length ? [`ControlNet: ${active.map((u) => `unit ${u.index + 1} (${u.module}${masks(u)})`)
      .join(", ")} `,
      h("button", { type: "button", class: "link", onclick: () => emit(EVENTS.SHOW_TAB, { id: "controlnet" }) }, "edit"),
      ...misfits.map((u) => h("span", { class: "error cn-misfit" }, `Unit ${u.index + 1}'s ControlNet is made for `
        + `${familyLabel(cnFamilies[controlnetStem(u.model)])} models, not ${familyLabel(family)}: the server refuses it. `
        + "Choose a ControlNet of this model's family, or turn the unit off."))] : "");
    controlnet.hidden = !active.length;
  }
  on(CHANGED, showControlNet);
  showControlNet();

  const int = (el) => Math.trunc(Number(el.value));
  return {
    prompt, negative, promptCard, settingsCard, variationCard, advancedCard: advanced.element, width, height, seed,
    referenceCard: references.element, addReference: references.add, takesReferences: references.takes,
    samplers: samplers.map((s) => s.name), schedulers: schedulers.map((s) => [s.name, s.label]),
    // `view.setCheckpoints(names)` now and whenever the models folder's checkpoints change
    watchCheckpoints(view) { checkpointViews.push(view); view.setCheckpoints(checkpoints.map((c) => c.name)); },
    // Once the cards are in the tab's `form`: its remembered values (under `key`) come back and are
    // kept as they change; its submit button and Ctrl+Enter anywhere in `panel` run `generate`.
    attach(panel, form, key, generate) {
      const remembered = loadForm(form, key);
      // a fresh form takes the model's advice; remembered values stay
      advised = "steps" in remembered || "cfg_scale" in remembered ? advice() : { cfg_scale: Number(cfgInput.value), steps: steps() };
      if (!("width" in remembered) && sizeFollowsModel) setSize(nativeSize());
      showPresets();
      showImageCfg();
      followAdvice();
      prompt.refresh();
      negative.refresh();
      styles.refresh();
      keepForm(form, key);
      form.noValidate = true; // generate() checks it (checkForm), pointing into collapsed cards too
      form.addEventListener("submit", (e) => { e.preventDefault(); generate(); });
      panel.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
      });
    },
    setSize,
    request() {
      const body = {
        prompt: prompt.textarea.value, negative_prompt: negative.textarea.value,
        sampler_name: sampler.value, scheduler: scheduler.value || null,
        steps: steps(), cfg_scale: Number(cfgInput.value),
        width: int(width), height: int(height), seed: int(seed), n_iter: int(nIter), batch_size: int(batchSize),
        send_images: false,
        override_settings: { sd_model_checkpoint: model.value, sd_vae: vae.value, CLIP_stop_at_last_layers: int(clipSkip) },
        ...(isEdit() ? { image_cfg_scale: Number(imageCfg.value) } : {}),
        ...references.request(),
        ...advanced.request(),
        ...controlnetFields(img2img),
      };
      const active = styles.active();
      if (active.length) body.styles = active;
      if (variation.checked) {
        body.subseed = int(subseed);
        body.subseed_strength = Number(strengthField.querySelector("input[name=subseed_strength]").value);
      }
      return body;
    },
    // Fill the shared fields from an A1111 request, so the same pixels come out again.
    apply(req) {
      prompt.setValue(req.prompt ?? "");
      negative.setValue(req.negative_prompt ?? "");
      const set = (name, value) => {
        const el = [promptCard, settingsCard, variationCard].map((c) => c.querySelector(`[name=${name}]`)).find(Boolean);
        if (value !== undefined && value !== null) el.value = value;
      };
      set("steps", req.steps); set("cfg_scale", req.cfg_scale); set("width", req.width); set("height", req.height);
      set("image_cfg_scale", req.image_cfg_scale);
      set("seed", req.seed);
      nIter.value = 1; batchSize.value = 1;
      if (req.sampler_name && !choose(sampler, req.sampler_name)) toast(`Sampler ${req.sampler_name} is not available`, "error");
      if (!req.scheduler) scheduler.value = "";
      else if (!choose(scheduler, req.scheduler)) toast(`Schedule ${req.scheduler} is not available`, "error");
      variation.checked = Boolean(req.subseed_strength);
      set("subseed", req.subseed ?? -1); set("subseed_strength", req.subseed_strength ?? 0);
      const o = req.override_settings || {};
      clipSkip.value = o.CLIP_stop_at_last_layers ?? 1;
      if (o.sd_model_checkpoint) { choose(model, o.sd_model_checkpoint); showPresets(); showImageCfg(); advised = advice(); }
      vae.value = o.sd_vae && choose(vae, o.sd_vae) ? vae.value : "Automatic";
      styles.set(req.styles || []); // an image's infotext has its styles in its prompt already
      advanced.apply(req);
      syncSliders(settingsCard);
      syncSliders(variationCard);
    },
  };
}
