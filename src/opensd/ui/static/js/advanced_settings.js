// The "Advanced" card of the generation settings: the sampler knobs A1111 takes in a request (eta,
// sigma noise, churn, tmin, tmax; empty = the sampler's default or the server's setting, and the
// server passes each only to the samplers that have it) and the SDXL refiner (refiner_checkpoint,
// refiner_switch_at), shown only when the server lists A1111's always-on "Refiner" script.
import { field, h } from "./dom.js";
import { setOptions, slider, syncSliders } from "./form.js";

// request field, label, step
const KNOBS = [["eta", "Eta (noise multiplier)", 0.01], ["s_noise", "Sigma noise", 0.001],
  ["s_churn", "Sigma churn", 0.01], ["s_tmin", "Sigma tmin", 0.01], ["s_tmax", "Sigma tmax", 0.01]];
const NO_REFINER = "None";

export function advancedSettings({ refiner = false } = {}) {
  const knobs = KNOBS.map(([name, label, step]) => ({ name, label,
    input: h("input", { type: "number", name, step, min: 0, placeholder: "default", inputmode: "decimal" }) }));
  const refinerModel = h("select", { name: "refiner_checkpoint" });
  const switchField = slider("Refiner switch at", "refiner_switch_at", { min: 0.01, max: 1, step: 0.01, value: 0.8 });
  const switchAt = switchField.querySelector("input[name=refiner_switch_at]");
  const element = h("details", { class: "card" }, h("summary", {}, "Advanced"),
    h("div", { class: "stack" },
      h("p", { class: "muted" }, "Sampler settings: leave a box empty for the sampler's default."),
      h("div", { class: "grid2" }, knobs.map((k) => field(k.label, k.input))),
      h("div", { class: "stack", role: "group", "aria-label": "Refiner", hidden: !refiner },
        h("h3", {}, "Refiner"),
        h("div", { class: "grid2" }, field("Refiner checkpoint", refinerModel), switchField))));

  return {
    element,
    setCheckpoints(names) {
      setOptions(refinerModel, [[NO_REFINER, "None"], ...names.map((n) => [n, n])], refinerModel.value || NO_REFINER);
    },
    request() {
      const body = {};
      for (const { name, input } of knobs) if (input.value.trim() !== "") body[name] = Number(input.value);
      if (refiner && refinerModel.value && refinerModel.value !== NO_REFINER) {
        Object.assign(body, { refiner_checkpoint: refinerModel.value, refiner_switch_at: Number(switchAt.value) });
      }
      return body;
    },
    // Fill from an A1111 request (reuse): what it does not say is left at the default.
    apply(req) {
      for (const { name, input } of knobs) input.value = req[name] ?? "";
      refinerModel.value = NO_REFINER;
      if (req.refiner_checkpoint) {
        const hit = [...refinerModel.options].find((o) => o.value === req.refiner_checkpoint
          || o.value.replace(/\.[^.]+$/, "") === req.refiner_checkpoint.replace(/ \[.*\]$/, ""));
        if (hit) refinerModel.value = hit.value;
      }
      switchAt.value = req.refiner_switch_at ?? 0.8;
      syncSliders(element);
    },
  };
}
