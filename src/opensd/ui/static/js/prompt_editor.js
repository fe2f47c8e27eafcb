// A prompt box with A1111's token counter and syntax colours. The colours come from a copy of the
// text behind a transparent <textarea>, built from text nodes (never HTML), so any prompt, even one
// holding markup, is only ever shown as text.
import { api } from "./api.js";
import { debounce, h, nextId } from "./dom.js";

// escaped char | <net:tag> | __wildcard__ | "{" with its "N$$" count | "}" | BREAK/AND |
// :weight before ) or ] | ( ) | [ ] | "|"
const SYNTAX = new RegExp([/(\\.)/, /(<\w+:[^>\n]+>)/, /(__[^\s{}|[\]()<>:,]+?__)/,
  /(\{(?:\s*\d*\s*-?\s*\d*\s*\$\$(?:[^|{}$]*\$\$)?)?)/, /(\})/, /(\bBREAK\b|\bAND\b)/,
  /(:\s*[-+]?(?:\d+\.?\d*|\.\d+)(?=\s*[)\]]))/, /([()])/, /([[\]])/, /(\|)/].map((r) => r.source).join("|"), "g");
const CLASSES = { net: "n", keyword: "k", weight: "num", paren: "w", bracket: "e" };

// Spans for the overlay. A dynamic-prompt group {a|b} is one span (tinted, nested groups inside it)
// whose braces and option bars are marked; a "|" inside [...] or (...) is A1111's alternation, as
// the server reads it (text/dynamic_prompts.py).
export function highlight(text) {
  const top = [];
  const groups = []; // open {...} spans, innermost last
  const open = [];   // open brackets "{", "[", "(", innermost last
  const put = (node) => (groups.length ? groups[groups.length - 1].append(node) : top.push(node));
  const mark = (cls, t) => put(cls ? h("span", { class: cls }, t) : document.createTextNode(t));
  let last = 0;
  for (const m of text.matchAll(SYNTAX)) {
    if (m.index > last) put(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    const [t, , net, wildcard, brace, close, keyword, weight, paren, bracket, bar] = m;
    if (brace !== undefined) {
      const group = h("span", { class: "dyn" }, h("span", { class: "dp" }, t));
      put(group);
      groups.push(group);
      open.push("{");
    } else if (close !== undefined) {
      if (open[open.length - 1] !== "{") { put(document.createTextNode(t)); continue; }
      mark("dp", t);
      groups.pop();
      open.pop();
    } else if (paren || bracket) {
      if (t === "(" || t === "[") open.push(t);
      else if (open[open.length - 1] === (t === ")" ? "(" : "[")) open.pop();
      mark(CLASSES[paren ? "paren" : "bracket"], t);
    } else if (bar) {
      mark(open[open.length - 1] === "{" ? "dp" : "e", t);
    } else {
      mark(wildcard ? "wc" : net ? CLASSES.net : keyword ? CLASSES.keyword : weight ? CLASSES.weight : null, t);
    }
  }
  put(document.createTextNode(text.slice(last) + "\n")); // a final newline still takes a line
  return top;
}

export function promptEditor({ label, name, placeholder = "", getSteps = () => 20 }) {
  const id = nextId(name);
  const textarea = h("textarea", { id, name, rows: 3, placeholder, spellcheck: "false", autocomplete: "off" });
  const overlay = h("div", { class: "hl", "aria-hidden": "true" });
  const counter = h("span", { class: "token-count", title: "Tokens used / tokens in the chunks of 75" }, "0/75");
  const element = h("div", { class: "field prompt-field" },
    h("div", { class: "prompt-head" }, h("label", { for: id }, label), counter),
    h("div", { class: "prompt-box" }, overlay, textarea));

  let asked = 0;
  const count = debounce(async () => {
    const mine = ++asked;
    try {
      const r = await api.post("/opensd/v1/tokens", { prompt: textarea.value, steps: getSteps() });
      if (mine !== asked) return; // a newer count is on its way
      counter.textContent = `${r.tokens}/${r.max_tokens}`;
      counter.classList.toggle("over", r.chunks > 1);
      counter.dataset.tokens = r.tokens;
    } catch (e) {
      counter.textContent = "?";
      counter.title = e.message;
    }
  }, 250);

  const render = () => {
    overlay.replaceChildren(...highlight(textarea.value));
    overlay.scrollTop = textarea.scrollTop;
  };
  textarea.addEventListener("input", () => { render(); count(); });
  textarea.addEventListener("scroll", () => { overlay.scrollTop = textarea.scrollTop; });

  return {
    element, textarea,
    refresh() { render(); count(); },
    setValue(value) { textarea.value = value ?? ""; render(); count(); },
    // Insert at the cursor, separated from the text before it by ", ".
    insert(text) {
      const { selectionStart: a, selectionEnd: b, value } = textarea;
      const before = value.slice(0, a);
      const sep = before && !/[\s,]$/.test(before) ? ", " : "";
      textarea.value = before + sep + text + value.slice(b);
      const at = (before + sep + text).length;
      textarea.setSelectionRange(at, at);
      textarea.focus();
      textarea.dispatchEvent(new Event("input", { bubbles: true }));
    },
  };
}
