"""Does the built-in Canny ControlNet follow its edges? Edge F1 between the Canny edges of the output
and the control edges, with vs without the ControlNet, on a fixed set of held-out emoji.

    python bench/controlnet_eval.py --controlnet runs/controlnet/controlnet-canny.safetensors \
        --n 24 --grid docs/controlnet-eval.png --json runs/controlnet/eval.json

Prompts default to another held-out image's caption, so the layout must come from the control
edges, not from the base model's memory of the concept. F1 uses a 1-pixel tolerance (an output edge pixel counts as correct if a control edge lies within
1 px, and vice versa for recall), as edge benchmarks (BSDS) do. Same prompts and seeds both ways.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.adapters.preprocessors import canny
from opensd.pipeline.pipeline import load
from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.training.controlnet_train import CANNY
from opensd.training.emoji_data import load_split


def edge_f1(output_edges: np.ndarray, control_edges: np.ndarray, tolerance: int = 1) -> tuple[float, float, float]:
    import cv2

    out, ctl = output_edges > 0, control_edges > 0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_ctl = cv2.dilate(ctl.astype(np.uint8), kernel) > 0
    near_out = cv2.dilate(out.astype(np.uint8), kernel) > 0
    precision = (out & near_ctl).sum() / max(out.sum(), 1)
    recall = (ctl & near_out).sum() / max(ctl.sum(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return float(precision), float(recall), float(f1)


def heldout_set(data: Path, n: int):
    split = load_split(data, "heldout")
    idx = np.linspace(0, len(split) - 1, n).round().astype(int)  # fixed, spread over the split
    return [(Image.fromarray(split.images[i]), split.captions[i]) for i in idx]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--controlnet", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=BUILTIN_CHECKPOINT)
    ap.add_argument("--data", type=Path, default=Path("data/emoji"))
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--prompt", choices=["caption", "mismatched", "empty"], default="mismatched",
                    help="caption: the image's own caption (the memorising base model then draws nearly the\n                    same emoji unaided); mismatched: another held-out caption; empty: unconditional")
    ap.add_argument("--grid", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = load(a.model)
    cn = load_controlnet(a.controlnet, pipe)
    rows, scores = [], {"without": [], "with": []}
    t0 = time.time()
    items = heldout_set(a.data, a.n)
    for k, (image, caption) in enumerate(items):
        control = canny(image, *CANNY)
        ctl = np.asarray(control)[:, :, 0]
        prompt = {"caption": caption, "empty": "", "mismatched": items[(k + len(items) // 2) % len(items)][1]}[a.prompt]
        kw = dict(steps=a.steps, cfg=a.cfg, seed=1000 + k, width=64, height=64)
        plain = pipe.txt2img(prompt, **kw)[0]
        guided = pipe.txt2img(prompt, controls=[ControlSpec(cn, control, weight=a.weight)], **kw)[0]
        for name, out in (("without", plain), ("with", guided)):
            scores[name].append(edge_f1(np.asarray(canny(out, *CANNY))[:, :, 0], ctl))
        rows.append((image, control, plain, guided))
    result = {"n": len(rows), "steps": a.steps, "cfg": a.cfg, "weight": a.weight, "prompt": a.prompt,
              "controlnet": str(a.controlnet), "seconds": round(time.time() - t0, 1)}
    for name, vals in scores.items():
        p, r, f = np.mean(vals, axis=0)
        result[name] = {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4)}
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1))
    if a.grid:
        cols = min(len(rows), 8)
        grid = Image.new("RGB", (cols * 64, 4 * 64), (255, 255, 255))
        for c, quad in enumerate(rows[:cols]):
            for r, im in enumerate(quad):
                grid.paste(im.convert("RGB").resize((64, 64)), (c * 64, r * 64))
        a.grid.parent.mkdir(parents=True, exist_ok=True)
        grid.resize((cols * 128, 4 * 128), Image.NEAREST).save(a.grid)
        print(f"grid: rows = held-out image, control edges, without ControlNet, with ControlNet -> {a.grid}")


if __name__ == "__main__":
    main()
