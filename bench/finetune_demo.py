"""LoRA demonstration: teach the built-in emoji model the OpenMoji style from ~30 images, on CPU.

    pip install -e ".[bench]"   # resvg-py, for the OpenMoji SVGs
    python bench/finetune_demo.py [--images 30 --budget-min 15 --threads 1]

1. Fetches the `openmoji` npm package (pinned version and sha512 integrity, `npm pack`), renders
   the colour SVGs of a few concepts to 64x64 PNGs on white with resvg, captions "<name>, openmoji style".
2. Trains a LoRA on the built-in model with `opensd.training.lora_train` (the code behind
   `opensd train lora`); the number of steps is chosen to fit --budget-min after timing a few steps.
3. Measures the style shift: a small style classifier (logistic regression on colour, outline and
   edge statistics) is fitted on OpenMoji images of *other* concepts vs. the built-in model's Noto /
   Twemoji training images, then judges generations of *held-out* concepts made with and without
   the LoRA (same prompts, same seeds). Reports the share judged OpenMoji in each case.
4. Writes docs/finetune-demo.png (rows: without LoRA, with LoRA, real OpenMoji) and
   docs/finetune-demo.json.

Everything heavy lives in runs/finetune_demo (git-ignored). OpenMoji artwork: CC BY-SA 4.0.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.training.lora_train import (
    LoraOptions,
    build,
    metadata,
    save_lora,
    started_at,
)

PACKAGE, VERSION = "openmoji", "17.0.0"
INTEGRITY = "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w=="
GROUPS = ("smileys-emotion", "food-drink", "animals-nature", "objects", "travel-places", "activities")
STYLE = "openmoji style"
BUILTIN = BUILTIN_CHECKPOINT


def fetch(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    tgz = dest / f"{PACKAGE}-{VERSION}.tgz"
    if not tgz.is_file():
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--ignore-scripts", "--pack-destination", str(dest)],
                       check=True, capture_output=True, timeout=600)
    sri = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if sri != INTEGRITY:
        raise SystemExit(f"{tgz}: integrity {sri} does not match the pinned {INTEGRITY}")
    return tgz


def concepts(tgz: Path) -> tuple[list[dict], dict[str, bytes]]:
    """Single-codepoint emoji of the chosen groups (no skin tones, no flags) and their colour SVGs."""
    with tarfile.open(tgz) as tf:
        meta = json.load(tf.extractfile("package/data/openmoji.json"))
        keep = [e for e in meta if e["group"] in GROUPS and "-" not in e["hexcode"] and not e.get("skintone")]
        svgs = {}
        for e in keep:
            try:
                svgs[e["hexcode"]] = tf.extractfile(f"package/color/svg/{e['hexcode']}.svg").read()
            except KeyError:
                pass
    return [e for e in keep if e["hexcode"] in svgs], svgs


def render(svg: bytes, size: int = 64) -> Image.Image:
    import io

    import resvg_py
    png = resvg_py.svg_to_bytes(svg_string=svg.decode("utf-8"), width=size, height=size, background="#ffffff")
    return Image.open(io.BytesIO(bytes(png))).convert("RGB")


def features(images: list[Image.Image]) -> np.ndarray:
    """Per image: share of dark (outline) pixels, of white, mean saturation, edge density and
    strength, and a coarse 3x3x3 colour histogram of the non-white pixels."""
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.float32) / 255.0
        lum = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        mx, mn = a.max(-1), a.min(-1)
        sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
        gx, gy = np.abs(np.diff(lum, axis=1)), np.abs(np.diff(lum, axis=0))
        fg = lum < 0.95
        q = np.minimum((a[fg] * 3).astype(int), 2)
        hist = np.bincount(q[:, 0] * 9 + q[:, 1] * 3 + q[:, 2], minlength=27) / max(1, fg.sum())
        out.append(np.concatenate([[(lum < 0.2).mean(), (lum > 0.95).mean(), sat[fg].mean() if fg.any() else 0,
                                    (gx > 0.3).mean(), (gy > 0.3).mean(), gx.mean(), gy.mean()], hist]))
    return np.asarray(out, dtype=np.float32)


class StyleClassifier:
    """Logistic regression on standardised features; 1 = OpenMoji."""

    def fit(self, pos: np.ndarray, neg: np.ndarray, steps: int = 2000) -> StyleClassifier:
        x = np.concatenate([pos, neg])
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        xt = torch.tensor((x - self.mu) / self.sd)
        yt = torch.tensor(y, dtype=torch.float32)
        self.lin = torch.nn.Linear(x.shape[1], 1)
        opt = torch.optim.Adam(self.lin.parameters(), lr=0.05, weight_decay=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(self.lin(xt)[:, 0], yt).backward()
            opt.step()
        return self

    @torch.no_grad()
    def prob(self, x: np.ndarray) -> np.ndarray:
        return torch.sigmoid(self.lin(torch.tensor((x - self.mu) / self.sd))[:, 0]).numpy()


def grid(rows: list[list[Image.Image]], path: Path, scale: int = 2) -> None:
    s = 64 * scale
    canvas = Image.new("RGB", (s * max(len(r) for r in rows), s * len(rows)), "white")
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas.paste(im.resize((s, s), Image.NEAREST), (j * s, i * s))
    canvas.save(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=30)
    p.add_argument("--eval-prompts", type=int, default=24)
    p.add_argument("--budget-min", type=float, default=15.0, help="training time budget in minutes")
    p.add_argument("--steps", type=int, help="fixed step count instead of the budget")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "finetune_demo")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--model", type=Path, default=BUILTIN, help="base model (default: the built-in model)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rng = random.Random(0)
    t0 = time.time()

    tgz = fetch(a.runs / "npm")
    found, svgs = concepts(tgz)
    rng.shuffle(found)
    train, held, other = found[:a.images], found[a.images:a.images + a.eval_prompts], found[a.images + a.eval_prompts:]
    data = a.runs / "data" / "openmoji"
    data.mkdir(parents=True, exist_ok=True)
    for e in train:
        png = data / f"{e['hexcode']}.png"
        if not png.is_file():
            render(svgs[e["hexcode"]]).save(png)
            png.with_suffix(".txt").write_text(f"{e['annotation']}, {STYLE}", encoding="utf-8")
    print(f"{len(found)} OpenMoji concepts; {len(train)} for training, {len(held)} held out for evaluation "
          f"({time.time() - t0:.0f} s)")

    run_dir = a.runs / "run"
    out = a.runs / "openmoji-style.safetensors"
    opts = LoraOptions(data=a.runs / "data", model=a.model, output=out, run_dir=run_dir, steps=a.steps or 10_000,
                       batch_size=a.batch_size, lr=a.lr, rank=a.rank, alpha=a.rank, warmup=20, flip=True,
                       save_every=25, seed=0)
    plan = a.runs / "plan.json"
    if a.steps is None and not plan.is_file():  # time a few steps, then size the run to the budget
        probe = LoraOptions(**{**opts.__dict__, "run_dir": a.runs / "probe", "steps": 6, "progress": False})
        trainer, *_ = build(probe)
        t = time.time()
        trainer.run(progress=False, until=2)
        t = time.time()
        trainer.run(progress=False)
        per = (time.time() - t) / 4
        plan.write_text(json.dumps({"steps": int(a.budget_min * 60 / per), "seconds_per_step": per}))
    steps = a.steps or json.loads(plan.read_text())["steps"]
    opts.steps = steps
    trainer, network, pipe, ds, steps = build(opts)
    t = time.time()
    timing = a.runs / "train_seconds.json"
    done_before = json.loads(timing.read_text()) if timing.is_file() else {"seconds": 0.0}
    trainer.run(progress=True)
    train_s = done_before["seconds"] + time.time() - t  # summed over resumed invocations
    timing.write_text(json.dumps({"seconds": train_s}))
    save_lora(network, out, metadata(opts, pipe, ds, steps, started_at(run_dir), trainer.step))
    losses = (float(np.mean(trainer.losses[:50])), float(np.mean(trainer.losses[-50:]))) if trainer.losses else (None, None)
    network.detach()
    del trainer, network, pipe

    # Generate through the user path: a fresh pipeline with the saved file applied (set_loras).
    from opensd.adapters.lora import LoraSpec
    from opensd.pipeline.pipeline import load
    gen_pipe = load(a.model)
    prompts = [f"{e['annotation']}, {STYLE}" for e in held]
    gens = {}
    for name, specs in (("without", []), ("with", [LoraSpec(out)])):
        gen_pipe.set_loras(specs)
        gens[name] = [gen_pipe.txt2img(q, steps=a.sample_steps, seed=1000 + i, cfg=7.0)[0]
                      for i, q in enumerate(prompts)]
    real_held = [render(svgs[e["hexcode"]]) for e in held]

    from opensd.training.emoji_data import load_split
    builtin = load_split(ROOT / "data" / "emoji", "train")
    idx = np.random.default_rng(0).choice(len(builtin.images), 200, replace=False)
    neg = [Image.fromarray(builtin.images[i]) for i in idx]
    pos = [render(svgs[e["hexcode"]]) for e in other[:200]]
    clf = StyleClassifier().fit(features(pos[:150]), features(neg[:150]))
    acc = float(((clf.prob(features(pos[150:])) > 0.5).mean() + (clf.prob(features(neg[150:])) < 0.5).mean()) / 2)
    share = {k: float((clf.prob(features(v)) > 0.5).mean()) for k, v in gens.items()}
    share["real_heldout_openmoji"] = float((clf.prob(features(real_held)) > 0.5).mean())
    mean_p = {k: float(clf.prob(features(v)).mean()) for k, v in gens.items()}

    a.docs.mkdir(parents=True, exist_ok=True)
    n = min(12, len(prompts))
    grid([gens["without"][:n], gens["with"][:n], real_held[:n]], a.docs / "finetune-demo.png")
    result = {
        "base_model": a.model.name, "openmoji": f"{PACKAGE}@{VERSION}", "train_images": len(train),
        "eval_prompts": len(prompts), "steps": steps, "batch_size": a.batch_size, "rank": a.rank, "lr": a.lr,
        "train_seconds": round(train_s, 1), "threads": a.threads,
        "loss_first_50": losses[0], "loss_last_50": losses[1],
        "style_classifier_heldout_accuracy": round(acc, 3),
        "share_judged_openmoji": {k: round(v, 3) for k, v in share.items()},
        "mean_p_openmoji": {k: round(v, 3) for k, v in mean_p.items()},
        "prompts": prompts[:n], "total_seconds": round(time.time() - t0, 1),
    }
    (a.docs / "finetune-demo.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
