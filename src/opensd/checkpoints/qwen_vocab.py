"""Find the Qwen tokenizer folder that goes with a Z-Image, FLUX.2 [klein] or Qwen-Image model's files
(Qwen3 and Qwen2.5-VL share the vocabulary and the chat tokens these templates use).

No Qwen vocabulary ships with opensd, and the text-encoder file (qwen_3_4b.safetensors) does not
carry one, so it is looked for where model folders keep it: a diffusers folder's tokenizer/; a
`qwen_tokenizer/` folder beside a model or text-encoder file; and in the models folder's
text_encoders/ or clip/ folder (the layout ComfyUI and Forge use). A tokenizer folder holds
tokenizer.json, or vocab.json and merges.txt (see opensd.text.qwen_tokenizer). Failing those, a
llama.cpp GGUF text encoder carries its own tokenizer, which is used.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..text.qwen_tokenizer import QwenTokenizer, is_tokenizer_folder

FOLDER = "qwen_tokenizer"
_MODEL_FOLDERS = ("text_encoders", "clip", "text_encoder")


def candidates(anchor: Path, name: str = FOLDER) -> list[Path]:
    """Folders that may hold the tokenizer of the model file or folder `anchor`, best first; `name`:
    the tokenizer folder's own name (qwen_tokenizer; mistral_tokenizer for FLUX.2 [dev])."""
    if anchor.is_dir():  # a diffusers folder, or the tokenizer folder itself
        places = [anchor / "tokenizer", anchor / name, anchor]
        folder = anchor
    else:
        folder = anchor.parent
        places = [folder / name]
    # models/diffusion_models/x.safetensors -> models/text_encoders/qwen_tokenizer/
    return places + [folder.parent / kind / name for kind in _MODEL_FOLDERS]


def find_qwen_tokenizer(*anchors: Path) -> Path | None:
    """The first tokenizer folder found for any of `anchors` (model files or folders), or None."""
    for anchor in anchors:
        for folder in candidates(Path(anchor)):
            if is_tokenizer_folder(folder):
                return folder
    return None


def load_qwen_tokenizer(*anchors: Path) -> QwenTokenizer:
    """The tokenizer found for `anchors` (the first names the model in the error), else the one a
    GGUF text-encoder file among them carries, or a CheckpointError that says where to put one."""
    folder = find_qwen_tokenizer(*anchors)
    if folder is None:
        for anchor in map(Path, anchors):
            if anchor.suffix.lower() == ".gguf" and anchor.is_file():
                try:
                    return QwenTokenizer.from_gguf(anchor)
                except CheckpointError:  # a GGUF without a Qwen tokenizer (a diffusion model's)
                    continue
        raise CheckpointError(anchors[0], "no Qwen tokenizer found (tokenizer.json, or vocab.json and "
                              "merges.txt): put the files of a Qwen tokenizer (Qwen3's or Qwen2.5-VL's, one "
                              "vocabulary: a Z-Image or Qwen-Image diffusers folder's tokenizer/) in a "
                              f"{FOLDER}/ folder beside the model or text-encoder file, or in "
                              f"models/text_encoders/{FOLDER}/")
    return QwenTokenizer.from_folder(folder)
