// "Describe image (tags)": the picture on a tab tagged by the server's WD14 tagger (POST
// /sdapi/v1/interrogate with A1111's "deepdanbooru", which the first installed tagger answers, worded by
// the DeepDanbooru settings) and the tags put into the prompt: after its text, or as the whole prompt
// when it is empty; the line beside the button says which. Without a tagger the server's refusal says
// where the model files go, and that is shown as it is.
import { api } from "./api.js";
import { h, icon, toast } from "./dom.js";

const LABEL = "Describe image (tags)";

// `image()`: the picture as a data URL, or null when there is none; `prompt`: a promptEditor (or any
// { textarea }); `what`: that box, as the status line names it.
export function describeButton({ image, prompt, what = "the prompt" }) {
  const status = h("span", { class: "muted describe-status", role: "status" });
  const button = h("button", { type: "button", class: "describe-image", onclick: describe,
    title: "Tags for the picture (a WD14 tagger from the models folder's wd14_tagger/), put into the prompt" },
  icon("search"), h("span", {}, LABEL));
  const element = h("div", { class: "row describe" }, button, status);

  let round = 0; // reset() (another picture) makes a reply still on its way stale
  async function describe() {
    const picture = image(), mine = ++round;
    if (!picture) { toast("Load an image first (Upload, paste or drop): then it can be described.", "error"); return; }
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    button.lastChild.textContent = "Describing…";
    status.textContent = "The tagger is looking at the image…";
    try {
      const { caption } = await api.post("/sdapi/v1/interrogate", { image: picture, model: "deepdanbooru" });
      if (mine === round) status.textContent = put(caption.trim());
    } catch (e) {
      status.textContent = "";
      toast(`${LABEL}: ${e.message}`, "error");
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
      button.lastChild.textContent = LABEL;
    }
  }
  function set(value) { // as typed: the counter, the colours and the remembered form follow
    prompt.textarea.value = value;
    prompt.textarea.dispatchEvent(new Event("input", { bubbles: true }));
  }
  function put(tags) {
    if (!tags) return `The tagger found no tag sure enough for this image; ${what} is unchanged.`;
    const text = prompt.textarea.value.trimEnd();
    if (!text) { set(tags); return `Tags put into ${what} (it was empty).`; }
    set(`${text}${/,$/.test(text) ? " " : ", "}${tags}`);
    return `Tags added at the end of ${what} (its text is kept).`;
  }
  return { element, button, status, reset() { round++; status.textContent = ""; } };
}
