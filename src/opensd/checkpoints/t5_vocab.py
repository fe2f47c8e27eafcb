"""Find the T5 vocabulary (SentencePiece `spiece.model`) that goes with a model's files.

No T5 vocabulary ships with opensd, and T5 weight files do not carry one, so it is looked for where
model folders keep it: a diffusers folder's tokenizer_3/ (SD3), tokenizer_2/ (Flux) or tokenizer/
(Chroma); beside a
model or T5 file, as `spiece.model`, `<file name>.spiece.model` or in a `t5_tokenizer/` folder;
and in the models folder's text_encoders/ or clip/ folder (the layout ComfyUI and Forge use).
"""
from __future__ import annotations

from pathlib import Path

NAME = "spiece.model"
_SUBFOLDERS = ("tokenizer_3", "tokenizer_2", "t5_tokenizer", "tokenizer")
_MODEL_FOLDERS = ("text_encoders", "clip", "text_encoder")


def candidates(anchor: Path) -> list[Path]:
    """Where to look for the vocabulary of the model file or folder `anchor`, best first."""
    folder = anchor if anchor.is_dir() else anchor.parent
    places = [folder / sub for sub in _SUBFOLDERS] + [folder]
    # models/checkpoints/x.safetensors -> models/text_encoders/, models/clip/
    places += [folder.parent / kind / sub for kind in _MODEL_FOLDERS for sub in ("t5_tokenizer", "")]
    out = [] if anchor.is_dir() else [anchor.with_name(anchor.name + "." + NAME)]
    return out + [p / NAME for p in places]


def find_t5_vocab(*anchors: Path) -> Path | None:
    """The first vocabulary file found for any of `anchors` (model files or folders), or None."""
    for anchor in anchors:
        for path in candidates(Path(anchor)):
            if path.is_file():
                return path
    return None
