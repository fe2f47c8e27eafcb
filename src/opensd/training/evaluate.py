"""Evaluate a text-to-image model on the emoji dataset: prompt adherence, a feature-space Fréchet
distance, and speed.

    python -m opensd.training.evaluate --model PATH --data data/emoji [--steps 20 --limit N]

1. **Prompt adherence.** A small concept classifier (``ConceptNet``, a compact CNN, trained here
   with the shared ``Trainer`` on the real *training* images, label = concept_id) scores
   (a) the real held-out images (upper bound), (b) one image generated per held-out caption (fixed
   seeds) and (c) the same generated images scored against the concept of a *different* held-out
   example (lower bound: what an image of the wrong thing scores). Target: generated top-5 is at
   least 60% of the real-image top-5.
2. **Fréchet distance** between generated and real held-out images in the classifier's
   penultimate feature space (the FID formula, but with our emoji classifier's features, not
   Inception-v3's: the number is not comparable with published FIDs).
3. **Speed** of txt2img (model resolution, ``--steps`` steps, CFG, batch 1): median of 5 after a
   warm-up, with 1 and 2 torch threads, and the load average at the time.

Writes ``results.json`` and ``results.md`` to ``--out`` (default ``runs/eval``). The classifier is
trained once per ``--out`` and reused (its ``state.pt`` / ``classifier.pt`` live there, never in the
repository); generated images are cached in ``--out`` by model file, steps, CFG and seed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write
from ..errors import run_main
from .trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

TARGET_RATIO = 0.6  # generated top-5 must reach this fraction of the real-image top-5


# -- the classifier -----------------------------------------------------------------------------


class ConceptNet(nn.Module):
    """Compact CNN: a stride-2 stem and 4 conv blocks (64→32→16→8 px) + global average pool → ``feature_dim``
    features (the penultimate layer used for the Fréchet distance) → linear classifier.
    Input: float images in [0, 1], (N, 3, H, W); H, W multiples of 8 (64 for emoji)."""

    def __init__(self, n_classes: int, width: int = 32, feature_dim: int = 256, dropout: float = 0.2):
        super().__init__()
        w = width

        def block(cin, cout, pool=True):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

        self.body = nn.Sequential(  # stride-2 stem: 64 px → 32 px at once (cheap on a CPU)
            nn.Conv2d(3, w, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w, pool=False),
            block(4 * w, feature_dim, pool=False),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, n_classes)
        self.n_classes = n_classes
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.5
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def augment(x: torch.Tensor, g: torch.Generator, max_shift: int = 4, jitter: float = 0.1) -> torch.Tensor:
    """Light augmentation: random translation by up to ``max_shift`` px (white fill, the emoji
    background), random scale 0.9–1.1 and a small brightness/contrast jitter. No flips and no hue
    changes: direction and colour tell some concepts apart (arrows, coloured hearts)."""
    n = x.shape[0]
    scale = 1 + (torch.rand(n, generator=g) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (2 * max_shift / x.shape[-1])
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # sample 1 - x with zero padding so that the outside becomes white
    out = 1 - F.grid_sample(1 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    b = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * jitter
    c = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * jitter
    return ((out - 0.5) * c + 0.5 + b).clamp(0, 1)


@dataclass
class ClassifierConfig:
    steps: int = 1000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup: int = 50
    width: int = 24
    feature_dim: int = 256
    label_smoothing: float = 0.1
    seed: int = 0


def train_classifier(images: np.ndarray, labels: np.ndarray, n_classes: int, run_dir: Path,
                     cfg: ClassifierConfig = ClassifierConfig(), progress: bool = True) -> ConceptNet:
    """Train ``ConceptNet`` with the shared Trainer (resumable; a finished run in ``run_dir`` is
    reused as is). ``images``: uint8 (N, H, W, 3); ``labels``: int (N,)."""
    torch.manual_seed(cfg.seed)
    model = ConceptNet(n_classes, cfg.width, cfg.feature_dim)
    x_all = to_tensor(images)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = len(y_all)

    def batches(start: int):
        step = start
        while True:  # batch k depends only on k: a resumed run continues the same data order
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            idx = torch.randint(0, n, (cfg.batch,), generator=g)
            yield augment(x_all[idx], g), y_all[idx]
            step += 1

    def loss_fn(m, batch, step):
        x, y = batch
        return F.cross_entropy(m(x), y, label_smoothing=cfg.label_smoothing)

    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=cfg.warmup,
                     grad_clip=1.0, save_every=max(1, min(200, cfg.steps)), seed=cfg.seed)
    trainer = Trainer(model, batches, loss_fn, tc, Path(run_dir))
    model = trainer.run(progress=progress)
    model.eval()
    return model


@torch.no_grad()
def classify(model: ConceptNet, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C), penultimate features (N, D)) of uint8 images, in eval mode."""
    model.eval()
    logits, feats = [], []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i:i + batch])
        f = model.features(x)
        feats.append(f.double().numpy())
        logits.append(model.head(f).double().numpy())
    if not logits:
        return np.zeros((0, model.n_classes)), np.zeros((0, model.feature_dim))
    return np.concatenate(logits), np.concatenate(feats)


# -- metrics ------------------------------------------------------------------------------------


def topk_accuracy(logits: np.ndarray, labels: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest logits (ties broken by a stable sort,
    lower class index first)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return {k: float("nan") for k in ks}
    # rank of the true class = number of classes with a strictly higher score, plus ties before it
    true = logits[np.arange(len(labels)), labels][:, None]
    idx = np.arange(logits.shape[1])[None, :]
    rank = (logits > true).sum(1) + ((logits == true) & (idx < labels[:, None])).sum(1)
    return {k: float((rank < k).mean()) for k in ks}


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, s1) and N(mu2, s2):
    |mu1 - mu2|² + tr(s1 + s2 - 2 (s1^½ s2 s1^½)^½). Uses symmetric eigendecompositions, which
    stay real and stable for the rank-deficient covariances of small samples."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(s1).astype(np.float64), np.atleast_2d(s2).astype(np.float64)
    r1 = _sqrt_psd(s1)
    cross = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_cross = np.sqrt(np.clip(cross, 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cross)
    return max(d, 0.0)


def feature_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def derangement(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation p with labels[p[i]] != labels[i] wherever possible (random, seeded)."""
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    p = rng.permutation(n)
    for _ in range(20):
        bad = np.flatnonzero(labels[p] == labels)
        if len(bad) == 0:
            break
        for i in bad:  # swap with a random partner when that fixes both positions
            j = int(rng.integers(n))
            if labels[p[j]] != labels[i] and labels[p[i]] != labels[j]:
                p[i], p[j] = p[j], p[i]
    return p


def same_concept_indices(train_ids: np.ndarray, wanted: np.ndarray, seed: int) -> np.ndarray:
    """For each wanted concept, the index of a random training example of that concept (-1 if none):
    a real-vs-real reference for the Fréchet distance with the same concept mix as the held-out set."""
    rng = np.random.default_rng(seed)
    by_concept: dict[int, list[int]] = {}
    for i, c in enumerate(np.asarray(train_ids).tolist()):
        by_concept.setdefault(c, []).append(i)
    return np.array([rng.choice(by_concept[c]) if c in by_concept else -1 for c in np.asarray(wanted).tolist()],
                    dtype=np.int64)


# -- generation and speed -----------------------------------------------------------------------


def _file_key(path: Path) -> str:
    st = Path(path).stat()
    return hashlib.sha256(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def generate(pipe, captions: Sequence[str], seeds: Sequence[int], steps: int, cfg: float,
             cache: Path | None = None, progress: bool = True) -> np.ndarray:
    """One image per caption (txt2img, batch 1, its own seed) as uint8 (N, H, W, 3). With
    ``cache`` (an .npz path), finished images are stored every few images and reused."""
    done: dict[tuple[str, int], np.ndarray] = {}
    if cache is not None and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as z:
            for c, s, im in zip(z["captions"].tolist(), z["seeds"].tolist(), z["images"]):
                done[(c, int(s))] = im

    def save():
        if cache is None or not done:
            return
        keys = list(done)
        with atomic_write(cache) as f:
            np.savez(f, captions=np.array([k[0] for k in keys]), seeds=np.array([k[1] for k in keys]),
                     images=np.stack([done[k] for k in keys]))

    out = []
    t0, fresh = time.time(), 0
    for i, (c, s) in enumerate(zip(captions, seeds)):
        key = (c, int(s))
        if key not in done:
            img = pipe.txt2img(c, steps=steps, cfg=cfg, seed=int(s), batch_size=1)[0]
            done[key] = np.asarray(img.convert("RGB"), dtype=np.uint8)
            fresh += 1
            if fresh % 16 == 0:
                save()
                if progress:
                    el = time.time() - t0
                    print(f"generated {i + 1}/{len(captions)} ({el / fresh:.2f} s/image)", file=sys.stderr, flush=True)
        out.append(done[key])
    save()
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def time_txt2img(pipe, steps: int, cfg: float, threads: Sequence[int] = (1, 2), repeats: int = 5,
                 prompt: str = "red heart, love, noto emoji style") -> list[dict]:
    """Median wall time of one txt2img call (batch 1) per thread count, after one warm-up call;
    records the load average before and after each measurement."""
    old = torch.get_num_threads()
    rows = []
    try:
        for t in threads:
            torch.set_num_threads(t)
            before = loadavg()
            pipe.txt2img(prompt, steps=steps, cfg=cfg, seed=0, batch_size=1)  # warm-up
            times = []
            for r in range(repeats):
                t0 = time.perf_counter()
                pipe.txt2img(prompt, steps=steps, cfg=cfg, seed=r + 1, batch_size=1)
                times.append(time.perf_counter() - t0)
            rows.append({"threads": t, "median_s": statistics.median(times), "min_s": min(times),
                         "max_s": max(times), "times_s": [round(x, 4) for x in times],
                         "loadavg_before": before, "loadavg_after": loadavg()})
    finally:
        torch.set_num_threads(old)
    return rows


# -- the command --------------------------------------------------------------------------------


def evaluate(model_path: Path, data: Path, out: Path, *, steps: int = 20, cfg: float = 7.0,
             limit: int | None = None, seed: int = 1000, classifier: ClassifierConfig = ClassifierConfig(),
             threads: int | None = None, speed_threads: Sequence[int] = (1, 2), speed_repeats: int = 5,
             progress: bool = True) -> dict:
    from ..pipeline.pipeline import load
    from .emoji_data import load_split

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    started = time.time()
    train = load_split(Path(data), "train")
    held = load_split(Path(data), "heldout")
    concepts_file = Path(data) / "concepts.json"
    n_classes = (len(json.loads(concepts_file.read_text(encoding="utf-8"))) if concepts_file.is_file()
                 else int(max(train.concept_ids.max(), held.concept_ids.max())) + 1)

    # 1. the classifier
    t0 = time.time()
    clf = train_classifier(train.images, train.concept_ids, n_classes, out / "classifier", classifier, progress)
    torch.save(clf.state_dict(), out / "classifier" / "classifier.pt")
    clf_seconds = time.time() - t0
    train_fit = topk_accuracy(classify(clf, train.images[:2000])[0], train.concept_ids[:2000])

    # held-out subset: the first `limit` examples (their order is fixed by the dataset build)
    n = len(held) if limit is None else min(limit, len(held))
    real_images, labels = held.images[:n], held.concept_ids[:n]
    captions = held.captions[:n]
    seeds = [seed + i for i in range(n)]

    # 2. generation (one image per held-out caption, seed = --seed + index)
    pipe = load(model_path)
    t0 = time.time()
    cache = out / f"generated_{_file_key(model_path)}_s{steps}_cfg{cfg:g}.npz"
    gen_images = generate(pipe, captions, seeds, steps, cfg, cache=cache, progress=progress)
    gen_seconds = time.time() - t0
    if gen_images.shape[1:3] != real_images.shape[1:3]:  # a model of another resolution
        g = torch.from_numpy(gen_images).permute(0, 3, 1, 2).float()
        g = F.interpolate(g, size=real_images.shape[1:3], mode="area" if g.shape[-1] > real_images.shape[2] else "bilinear")
        gen_images = g.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    _save_grid(out / "generated_grid.png", real_images[:32], gen_images[:32])

    real_logits, real_feats = classify(clf, real_images)
    gen_logits, gen_feats = classify(clf, gen_images)
    perm = derangement(labels, seed)
    acc_real = topk_accuracy(real_logits, labels)
    acc_gen = topk_accuracy(gen_logits, labels)
    acc_other = topk_accuracy(gen_logits, labels[perm])  # image made for caption j, scored as concept of i
    ratio = acc_gen[5] / acc_real[5] if acc_real[5] > 0 else float("nan")

    # 3. Fréchet distances in the classifier's penultimate feature space
    rng = np.random.default_rng(seed)
    ref_idx = rng.choice(len(train), size=min(n, len(train)), replace=False)
    _, train_feats = classify(clf, train.images[ref_idx])
    same_idx = same_concept_indices(train.concept_ids, labels, seed)
    _, same_feats = classify(clf, train.images[same_idx[same_idx >= 0]])
    fd_gen = feature_frechet(gen_feats, real_feats)
    fd_train = feature_frechet(train_feats, real_feats)  # real vs real, random concepts
    fd_same = feature_frechet(same_feats, real_feats[same_idx >= 0])  # real vs real, same concepts

    # 4. speed
    speed = time_txt2img(pipe, steps, cfg, speed_threads, speed_repeats) if speed_repeats > 0 else []

    res = {
        "model": str(model_path), "data": str(data), "n_heldout_used": n, "n_heldout_total": len(held),
        "steps": steps, "cfg": cfg, "sampler": "pipeline default", "seeds": f"{seed}..{seed + n - 1}",
        "classifier": {"config": asdict(classifier), "n_classes": n_classes, "n_train": len(train),
                       "train_seconds": round(clf_seconds, 1), "train_top1_top5_first2000": [train_fit[1], train_fit[5]],
                       "weights": str(out / "classifier" / "classifier.pt")},
        "adherence": {
            "real_heldout": {"top1": acc_real[1], "top5": acc_real[5]},
            "generated_heldout_captions": {"top1": acc_gen[1], "top5": acc_gen[5]},
            "generated_other_captions": {"top1": acc_other[1], "top5": acc_other[5]},
            "generated_over_real_top5": ratio, "target_ratio": TARGET_RATIO,
            "target_met": bool(ratio >= TARGET_RATIO),
        },
        "frechet": {"generated_vs_real_heldout": fd_gen, "real_train_random_vs_real_heldout": fd_train,
                    "real_train_same_concepts_vs_real_heldout": fd_same, "n_same_concepts": int((same_idx >= 0).sum()),
                    "feature_dim": clf.feature_dim, "n": n},
        "speed": speed, "generation_seconds": round(gen_seconds, 1),
        "torch_threads": torch.get_num_threads(), "loadavg_end": loadavg(),
        "total_seconds": round(time.time() - started, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    (out / "results.md").write_text(markdown(res), encoding="utf-8")
    return res


def markdown(r: dict) -> str:
    a, f = r["adherence"], r["frechet"]
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    lines = [
        f"Model `{r['model']}`, {r['n_heldout_used']} of {r['n_heldout_total']} held-out captions, "
        f"{r['steps']} steps, CFG {r['cfg']:g}, seeds {r['seeds']}.",
        "",
        "| images scored by the concept classifier | top-1 | top-5 |",
        "| --- | --- | --- |",
        f"| (a) real held-out images (upper bound) | {pct(a['real_heldout']['top1'])} | {pct(a['real_heldout']['top5'])} |",
        f"| (b) generated from the held-out captions | {pct(a['generated_heldout_captions']['top1'])} | "
        f"{pct(a['generated_heldout_captions']['top5'])} |",
        f"| (c) generated for other captions, scored as the held-out concept (lower bound) | "
        f"{pct(a['generated_other_captions']['top1'])} | {pct(a['generated_other_captions']['top5'])} |",
        "",
        f"Generated / real top-5: **{a['generated_over_real_top5']:.2f}** (target ≥ {a['target_ratio']}: "
        f"**{'met' if a['target_met'] else 'not met'}**).",
        "",
        "| Fréchet distance, classifier penultimate features (not Inception-FID) | value |",
        "| --- | --- |",
        f"| generated vs real held-out ({f['n']} vs {f['n']}) | {f['generated_vs_real_heldout']:.2f} |",
        f"| real: training images of the same concepts (another style/tone) vs held-out | "
        f"{f['real_train_same_concepts_vs_real_heldout']:.2f} |",
        f"| real: random training images vs held-out (different concept mix) | {f['real_train_random_vs_real_heldout']:.2f} |",
    ]
    if r["speed"]:
        lines += ["", f"| txt2img, batch 1, {r['steps']} steps, CFG | median of {len(r['speed'][0]['times_s'])} | min–max | load average (1/5/15 min) before |",
                  "| --- | --- | --- | --- |"]
        for s in r["speed"]:
            la = "/".join(f"{x:.2f}" for x in s["loadavg_before"]) if s["loadavg_before"] else "?"
            lines.append(f"| {s['threads']} thread{'s' if s['threads'] > 1 else ''} | {s['median_s']:.2f} s | "
                         f"{s['min_s']:.2f}–{s['max_s']:.2f} s | {la} |")
    return "\n".join(lines) + "\n"


def _save_grid(path: Path, top: np.ndarray, bottom: np.ndarray) -> None:
    """Real images on the top row, generated on the bottom (same captions)."""
    try:
        from PIL import Image
        if len(top) == 0:
            return
        rows = [np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    except Exception as e:  # a preview only
        log.warning("could not write %s: %s", path, e)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m opensd.training.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="checkpoint file to evaluate")
    ap.add_argument("--data", type=Path, default=Path("data/emoji"), help="built emoji dataset")
    ap.add_argument("--out", type=Path, default=Path("runs/eval"), help="results, classifier and image cache")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N held-out captions")
    ap.add_argument("--seed", type=int, default=1000, help="image i uses seed + i")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for training and generation")
    ap.add_argument("--classifier-steps", type=int, default=ClassifierConfig.steps)
    ap.add_argument("--classifier-batch", type=int, default=ClassifierConfig.batch)
    ap.add_argument("--speed-repeats", type=int, default=5, help="0 skips the speed measurement")
    ap.add_argument("--speed-threads", type=str, default="1,2")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s")
    cc = ClassifierConfig(steps=a.classifier_steps, batch=a.classifier_batch)
    res = evaluate(a.model, a.data, a.out, steps=a.steps, cfg=a.cfg, limit=a.limit, seed=a.seed, classifier=cc,
                   threads=a.threads, speed_threads=[int(t) for t in a.speed_threads.split(",") if t],
                   speed_repeats=a.speed_repeats, progress=not a.quiet)
    print(markdown(res))
    print(f"wrote {a.out / 'results.json'} and {a.out / 'results.md'}")
    return 0


if __name__ == "__main__":  # a user's mistake (no dataset, a bad file) ends in one line
    sys.exit(run_main(main))
