"""Grid infotexts: a generation's infotext with the script's own keys added ("Script", "X Type", ...)."""
from __future__ import annotations

from collections.abc import Mapping

from ..pipeline.infotext import format_infotext, parse_infotext


def add_params(infotext: str, extra: Mapping[str, object]) -> str:
    """`infotext` with the `extra` keys (None values left out) among its parameters."""
    prompt, negative, params = parse_infotext(infotext)
    for key in [k for k in params if k[-2:] in ("-1", "-2") and k[:-2] in params]:
        del params[key]  # the reader's split of "Size: 64x64"; the pair itself is kept
    params.update({k: v for k, v in extra.items() if v is not None})
    return format_infotext(prompt, negative, params)
