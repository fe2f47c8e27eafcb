"""A1111's /sdapi/v1/embeddings: the embeddings folder's textual inversions, split as A1111 splits them:
"loaded" (the current model can use them) and "skipped" (made for another model family), each with its
width ("shape": 768 for SD 1.x, 1024 for SD 2.x, 768 + 1280 for SDXL) and vector count.

Which family fits is known only while the current model is loaded; the list never loads it, so before
its first job every readable embedding is listed as loaded. Files that are not embeddings at all are
left out, as A1111 leaves them out."""
from __future__ import annotations

from ..errors import CheckpointError, InvalidArgument
from ..text.embeddings import Embedding


def _current_encoders(state) -> list | None:
    """The loaded current model's text-encoder configs, or None."""
    try:
        pipe = state.cache.peek(state.current_model())
    except InvalidArgument:  # no checkpoint at all
        return None
    return getattr(getattr(pipe, "config", None), "text_encoders", None) if pipe is not None else None


def _fits(emb: Embedding, encoders: list | None) -> bool:
    if not encoders:
        return True
    try:
        for cfg in encoders:
            emb.for_encoder(cfg.naming, cfg.width, len(encoders))
    except CheckpointError:
        return False
    return True


def _item(emb: Embedding) -> dict:
    return {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
            "shape": sum(v.shape[1] for v in emb.vectors.values()), "vectors": emb.count}


def listing(state) -> dict:
    encoders = _current_encoders(state)
    loaded, skipped = {}, {}
    for emb in state.cache.embeddings.get():
        (loaded if _fits(emb, encoders) else skipped)[emb.name] = _item(emb)
    return {"loaded": loaded, "skipped": skipped}
