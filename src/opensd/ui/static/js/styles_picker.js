// Prompt styles (A1111's styles.csv, GET /sdapi/v1/prompt-styles). Styles picked here go with the
// request by name (`styles: [...]`, applied by the server as A1111 applies them) and are listed as
// active; "Apply to prompt" merges them into the prompt boxes instead (A1111's button), so their
// text can be edited, and leaves none active.
import { h } from "./dom.js";
import { chips } from "./form.js";

const PLACEHOLDER = "{prompt}";

// A style's text applied to a prompt as A1111 does: into its {prompt} placeholder, else after ", ".
function mergeStyle(styleText, prompt) {
  if (styleText.includes(PLACEHOLDER)) return styleText.replaceAll(PLACEHOLDER, prompt);
  return [prompt.trim(), styleText.trim()].filter(Boolean).join(", ");
}

// `prompt`, `negative`: the prompt editors the styles apply to.
export function stylesPicker(styles, prompt, negative) {
  const byName = new Map(styles.map((s) => [s.name, s]));
  const summary = h("summary", {});
  const status = h("p", { class: "muted", role: "status" });
  const applyButton = h("button", { type: "button", onclick: applyToPrompt,
    title: "Write the active styles into the prompt and negative prompt" }, "Apply to prompt");
  const picked = chips("styles", "Styles to apply", {
    title: (name) => [byName.get(name).prompt, byName.get(name).negative_prompt && `Negative: ${byName.get(name).negative_prompt}`]
      .filter(Boolean).join("\n"),
    onChange: (now) => {
      summary.textContent = now.length ? `Styles (${now.length} active)` : `Styles (${styles.length})`;
      status.textContent = now.length ? `Active: ${now.join(", ")}` : "No style active";
      applyButton.disabled = !now.length;
    },
  });
  picked.setChoices([...byName.keys()]);
  const element = h("details", { class: "styles-picker", hidden: !styles.length }, summary,
    h("div", { class: "stack" }, picked.element, h("div", { class: "toolbar spread" }, status, applyButton)));

  function applyToPrompt() {
    let [p, n] = [prompt.textarea.value, negative.textarea.value];
    for (const name of picked.get()) {
      const style = byName.get(name);
      p = mergeStyle(style.prompt, p);
      n = mergeStyle(style.negative_prompt, n);
    }
    prompt.setValue(p);
    negative.setValue(n);
    picked.set([]);
    prompt.textarea.dispatchEvent(new Event("input", { bubbles: true })); // the form remembers the prompts
  }

  return {
    element,
    active: picked.get,
    set: picked.set,
    refresh: picked.render, // after the form's remembered values are back
  };
}
