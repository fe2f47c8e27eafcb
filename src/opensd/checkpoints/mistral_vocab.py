"""Find the Mistral (tekken) tokenizer that goes with a FLUX.2 [dev] model's files.

No vocabulary ships with opensd and the text-encoder file is not read for one, so it is looked for
where the Qwen tokenizer is (qwen_vocab.candidates): a diffusers folder's tokenizer/ (FLUX.2-dev's
holds tokenizer.json and tokenizer_config.json); a `mistral_tokenizer/` folder beside a model or
text-encoder file; the models folder's text_encoders/mistral_tokenizer/ (or clip/).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..text.mistral_tokenizer import MistralTokenizer, is_mistral_tokenizer_folder
from .qwen_vocab import candidates

FOLDER = "mistral_tokenizer"


def load_mistral_tokenizer(*anchors: Path) -> MistralTokenizer:
    """The tokenizer found for `anchors` (model files or folders; the first names the model in the
    error), or a CheckpointError that says where to put one."""
    for anchor in map(Path, anchors):
        for folder in candidates(anchor, FOLDER):
            if is_mistral_tokenizer_folder(folder):
                try:
                    return MistralTokenizer.from_folder(folder)
                except CheckpointError:  # another model's tokenizer (a Qwen one beside a klein file)
                    continue
    raise CheckpointError(anchors[0], "no Mistral tokenizer found (tokenizer.json): put the files of FLUX.2 [dev]'s "
                          "tokenizer (the FLUX.2-dev diffusers folder's tokenizer/: tokenizer.json and "
                          f"tokenizer_config.json) in a {FOLDER}/ folder beside the model or text-encoder file, "
                          f"or in models/text_encoders/{FOLDER}/")
