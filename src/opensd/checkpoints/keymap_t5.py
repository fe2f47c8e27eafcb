"""T5 encoder files -> the state dict of opensd.models.t5.T5EncoderModel.

Every T5 encoder file in circulation (transformers' T5EncoderModel, ComfyUI's t5xxl_*.safetensors,
SD3's bundled `text_encoders.t5xxl.transformer.*`) uses transformers' key names, which are our
attribute names. The one difference: the token embedding is stored as `shared.weight`, as
`encoder.embed_tokens.weight` (the same tied tensor), or both.
"""
from __future__ import annotations

from torch import Tensor

_SHARED = "shared.weight"
_TIED = "encoder.embed_tokens.weight"


def t5_state_dict(sd: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The keys under `prefix`, without it, with the tied embedding stored once as `shared.weight`.

    Keys outside `prefix` are ignored. Missing or unknown keys are left to the strict load that follows.
    """
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    tied = out.pop(_TIED, None)
    if _SHARED not in out and tied is not None:
        out[_SHARED] = tied
    return out
