"""DreamBooth demonstration: teach the built-in emoji model one concept it never saw, from 20 images
under a rare token, on CPU.

    python bench/dreambooth_demo.py [--budget-min 10 --threads 1]

1. The concept: OpenMoji's "pomegranate" (E0C4, group extras-openmoji). It is an OpenMoji-only emoji
   in the Private Use Area, not a Unicode emoji, so it is in neither Noto Emoji nor Twemoji and the
   built-in model (trained only on those two) never saw it; the script checks that no concept of
   data/emoji has that code or "pomegranate" in its name. The 20 instance images are renderings of
   its one colour SVG (npm `openmoji`, fetched and checked as in bench/finetune_demo.py) at random
   scale 0.7-1.0, rotation +-15 degrees, shift and mirroring, captioned "sks fruit".
2. DreamBooth (`opensd.training.dreambooth`, the code behind `opensd train dreambooth`): full UNet
   fine-tune, prior preservation on the class prompt "fruit" with class images the base model
   generates itself; steps sized to --budget-min after timing a few steps.
3. A concept classifier (our ConceptNet from opensd.training.evaluate, 2 classes) is trained on other
   augmented renderings of the concept vs. real Noto/Twemoji training images and other OpenMoji
   emoji, and validated on unseen renderings, the held-out Noto/Twemoji split and unseen OpenMoji.
   It judges 32 generations (fixed seeds) each of: base model "sks fruit", DreamBooth "sks fruit",
   base "fruit", DreamBooth "fruit". Prior preservation is checked by comparing the class-prompt
   generations before and after training, seed by seed.
4. Writes docs/dreambooth-demo.png and docs/dreambooth-demo.json.

Everything heavy lives in runs/dreambooth_demo (git-ignored); rerunning continues where it stopped.
OpenMoji artwork: CC BY-SA 4.0.
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_demo import BUILTIN, PACKAGE, VERSION, concepts, fetch, grid, render

CONCEPT = "E0C4"  # OpenMoji extras-openmoji "pomegranate"
INSTANCE_PROMPT = "sks fruit"
CLASS_PROMPT = "fruit"


def svg_of(tgz: Path, hexcode: str) -> tuple[dict, bytes]:
    with tarfile.open(tgz) as tf:
        meta = json.load(tf.extractfile("package/data/openmoji.json"))
        entry = next(e for e in meta if e["hexcode"] == hexcode)
        return entry, tf.extractfile(f"package/color/svg/{hexcode}.svg").read()


def check_unseen(entry: dict) -> None:
    """The built-in model's data has no concept with this code or name."""
    cs = json.loads((ROOT / "data" / "emoji" / "concepts.json").read_text(encoding="utf-8"))
    word = entry["annotation"].lower()
    hits = [c for c in cs if c["unified"].upper().startswith(entry["hexcode"]) or word in c["name"].lower()
            or any(word in s for s in c["short_names"])]
    if hits:
        raise SystemExit(f"{entry['annotation']} is in the built-in model's data: {hits[:3]}")


def variants(svg: bytes, n: int, seed: int) -> list[Image.Image]:
    """n renderings of one SVG: scale 0.7-1.0, rotation +-15 degrees, shift, mirrored half the time."""
    rng = np.random.default_rng(seed)
    big = render(svg, 128)
    out = []
    for _ in range(n):
        s = rng.uniform(0.7, 1.0)
        im = big.rotate(rng.uniform(-15, 15), resample=Image.BICUBIC, fillcolor="white")
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        side = max(8, round(64 * float(s)))
        im = im.resize((side, side), Image.LANCZOS)
        canvas = Image.new("RGB", (64, 64), "white")
        room = 64 - side
        dx, dy = (int(rng.integers(0, room + 1)) for _ in range(2)) if room else (0, 0)
        canvas.paste(im, (dx, dy))
        out.append(canvas)
    return out


def arr(images) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])


@torch.no_grad()
def roundtrip(vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 images through the VAE (posterior mean) and back."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        rec = vae(x).clamp(-1, 1).add(1).mul(127.5).round().byte()
        out.append(rec.permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def blur(images: np.ndarray, radius: float = 0.8) -> np.ndarray:
    from PIL import ImageFilter
    return arr([Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius)) for im in images])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--budget-min", type=float, default=10.0, help="training time budget in minutes")
    p.add_argument("--steps", type=int, help="fixed step count instead of the budget")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--class-images", type=int, default=40)
    p.add_argument("--prior-weight", type=float, default=1.0)
    p.add_argument("--eval-seeds", type=int, default=32)
    p.add_argument("--classifier-steps", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "dreambooth_demo")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    a.runs.mkdir(parents=True, exist_ok=True)

    # 1. the concept and its instance images
    tgz = fetch(ROOT / "runs" / "finetune_demo" / "npm")
    entry, svg = svg_of(tgz, CONCEPT)
    check_unseen(entry)
    data = a.runs / "data"
    data.mkdir(parents=True, exist_ok=True)
    instance = variants(svg, a.images, seed=0)
    for i, im in enumerate(instance):
        png = data / f"{CONCEPT}-{i:02d}.png"
        if not png.is_file():
            im.save(png)
            png.with_suffix(".txt").write_text(INSTANCE_PROMPT, encoding="utf-8")
    print(f"concept {CONCEPT} {entry['annotation']!r} ({entry['group']}); {len(instance)} instance images", flush=True)

    # 2. DreamBooth
    from opensd.training.dreambooth import DreamBoothOptions, build, train_dreambooth
    out = a.runs / "sks-pomegranate.safetensors"
    opts = DreamBoothOptions(data=data, model=BUILTIN, output=out, run_dir=a.runs / "run", steps=a.steps or 10_000,
                             batch_size=a.batch_size, lr=a.lr, warmup=20, save_every=25, seed=0,
                             instance_prompt=INSTANCE_PROMPT, class_prompt=CLASS_PROMPT,
                             num_class_images=a.class_images, class_dir=a.runs / "class_images",
                             prior_weight=a.prior_weight, class_steps=a.sample_steps)
    plan = a.runs / "plan.json"
    if a.steps is None and not plan.is_file():  # time a few steps, then size the run to the budget
        t = time.time()
        probe = DreamBoothOptions(**{**opts.__dict__, "run_dir": a.runs / "probe", "steps": 6, "progress": False})
        trainer, *_ = build(probe)  # also generates the class images (cached in runs/, reused below)
        class_s = time.time() - t
        trainer.run(progress=False, until=2)
        t = time.time()
        trainer.run(progress=False)
        per = (time.time() - t) / 4
        plan.write_text(json.dumps({"steps": int(a.budget_min * 60 / per), "seconds_per_step": per,
                                    "class_image_seconds": class_s}))
        del trainer
    steps = a.steps or json.loads(plan.read_text())["steps"]
    opts.steps = steps
    timing = a.runs / "train_seconds.json"
    if not out.is_file():
        before = json.loads(timing.read_text())["seconds"] if timing.is_file() else 0.0
        t = time.time()
        train_dreambooth(opts)
        timing.write_text(json.dumps({"seconds": before + time.time() - t}))
    train_s = json.loads(timing.read_text())["seconds"]
    losses = None
    state = a.runs / "run" / "state.pt"
    if state.is_file():
        st = torch.load(state, map_location="cpu", weights_only=False)
        ls = st.get("losses") if isinstance(st, dict) else None
        if ls:
            losses = (float(np.mean(ls[:50])), float(np.mean(ls[-50:])))
        del st

    # 3. the concept classifier
    from opensd.training.emoji_data import load_split
    from opensd.training.evaluate import ClassifierConfig, classify, train_classifier
    train = load_split(ROOT / "data" / "emoji", "train")
    held = load_split(ROOT / "data" / "emoji", "heldout")
    rng = np.random.default_rng(0)
    found, svgs = concepts(tgz)
    rng.shuffle(found)
    others = [arr([render(svgs[e["hexcode"]])])[0] for e in found[:400]]
    pos_train = arr(variants(svg, 300, seed=1))
    neg_train = np.concatenate([train.images[rng.choice(len(train), 1200, replace=False)], np.stack(others[:300])])
    # Generations are softer than the crisp renderings; so that sharpness is no cue, every training
    # image (both classes) is also shown after a round trip through the built-in model's VAE, and
    # blurred after it.
    from opensd.pipeline.pipeline import load
    vae = load(BUILTIN).model.vae
    x = np.concatenate([pos_train, neg_train])
    y = np.concatenate([np.ones(len(pos_train), int), np.zeros(len(neg_train), int)])
    x_rt = roundtrip(vae, x)
    x = np.concatenate([x, x_rt, blur(x_rt)])
    y = np.concatenate([y, y, y])
    clf = train_classifier(x, y, 2, a.runs / "classifier-vae",
                           ClassifierConfig(steps=a.classifier_steps, batch=64, warmup=20), progress=False)

    def p_concept(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, feats = classify(clf, images)
        return torch.softmax(torch.tensor(logits), -1)[:, 1].numpy(), feats

    val_sets = {"unseen_renderings": arr(variants(svg, 100, seed=2)), "heldout_noto_twemoji": held.images,
                "unseen_openmoji": np.stack(others[300:])}
    val = {k: p_concept(v)[0] for k, v in val_sets.items()}
    val |= {f"{k}_vae_roundtrip": p_concept(roundtrip(vae, v))[0] for k, v in val_sets.items()}
    cs = json.loads((ROOT / "data" / "emoji" / "concepts.json").read_text(encoding="utf-8"))
    fruit_ids = [c["concept_id"] for c in cs if c.get("subcategory") == "food-fruit"]
    fruit = np.isin(held.concept_ids, fruit_ids)  # hard negatives: other fruit
    val["heldout_noto_twemoji_fruit"] = val["heldout_noto_twemoji"][fruit]
    judged = {k: float((v > 0.5).mean()) for k, v in val.items()}
    acc = (judged["unseen_renderings"] + 1 - judged["heldout_noto_twemoji"]) / 2
    acc_rt = (judged["unseen_renderings_vae_roundtrip"] + 1 - judged["heldout_noto_twemoji_vae_roundtrip"]) / 2
    print(f"classifier: {json.dumps({k: round(v, 3) for k, v in judged.items()})}", flush=True)

    # 4. generations: base and DreamBooth, with and without the token, same seeds
    from opensd.training.evaluate import generate
    seeds = [2000 + i for i in range(a.eval_seeds)]
    gens = {}
    tg = time.time()
    for model_name, path in (("base", BUILTIN), ("dreambooth", out)):
        pipe = load(path)
        for cond, prompt in (("token", INSTANCE_PROMPT), ("class", CLASS_PROMPT)):
            gens[f"{model_name}_{cond}"] = generate(pipe, [prompt] * len(seeds), seeds, a.sample_steps, a.cfg,
                                                    cache=a.runs / f"gen_{model_name}_{cond}.npz", progress=False)
        del pipe
    gen_timing = a.runs / "gen_seconds.json"  # summed over the invocations that generated something
    gen_before = json.loads(gen_timing.read_text())["seconds"] if gen_timing.is_file() else 0.0
    gen_s = gen_before + (time.time() - tg if time.time() - tg > 5 else 0.0)
    gen_timing.write_text(json.dumps({"seconds": gen_s}))
    probs, feats = {}, {}
    for k, v in gens.items():
        probs[k], feats[k] = p_concept(v)
    share = {k: float((v > 0.5).mean()) for k, v in probs.items()}
    mean_p = {k: float(v.mean()) for k, v in probs.items()}

    # prior preservation: class-prompt images before vs after, seed by seed, against the distance
    # between base-model images of different seeds (seed i vs seed i+1) as the scale of "unrelated"
    b, d = gens["base_class"].astype(np.float32) / 255, gens["dreambooth_class"].astype(np.float32) / 255
    fb, fd = feats["base_class"], feats["dreambooth_class"]
    prior = {
        "pixel_mae_same_seed_before_vs_after": float(np.abs(b - d).mean()),
        "pixel_mae_base_different_seeds": float(np.abs(b - np.roll(b, 1, 0)).mean()),
        "feature_l2_same_seed_before_vs_after": float(np.linalg.norm(fb - fd, axis=1).mean()),
        "feature_l2_base_different_seeds": float(np.linalg.norm(fb - np.roll(fb, 1, 0), axis=1).mean()),
        "diversity_pixel_mae_between_seeds_base_class": float(np.abs(b - np.roll(b, 1, 0)).mean()),
        "diversity_pixel_mae_between_seeds_dreambooth_class": float(np.abs(d - np.roll(d, 1, 0)).mean()),
        "diversity_feature_l2_between_seeds_dreambooth_class": float(np.linalg.norm(fd - np.roll(fd, 1, 0), axis=1).mean()),
        "token_images_pixel_mae_base_vs_dreambooth": float(np.abs(gens["base_token"].astype(np.float32) / 255
                                                                  - gens["dreambooth_token"].astype(np.float32) / 255).mean()),
    }

    a.docs.mkdir(parents=True, exist_ok=True)
    n = 12
    rows = [instance[:n]] + [[Image.fromarray(im) for im in gens[k][:n]]
                             for k in ("base_token", "dreambooth_token", "base_class", "dreambooth_class")]
    grid(rows, a.docs / "dreambooth-demo.png")
    result = {
        "base_model": BUILTIN.name, "concept": {"hexcode": CONCEPT, "name": entry["annotation"], "group": entry["group"],
                                                "source": f"{PACKAGE}@{VERSION}", "instance_images": len(instance)},
        "instance_prompt": INSTANCE_PROMPT, "class_prompt": CLASS_PROMPT, "class_images": a.class_images,
        "prior_weight": a.prior_weight, "steps": steps, "batch_size": a.batch_size, "lr": a.lr,
        "train_seconds": round(train_s, 1), "threads": a.threads,
        "plan": json.loads(plan.read_text()) if plan.is_file() else None,
        "loss_first_50": losses[0] if losses else None, "loss_last_50": losses[1] if losses else None,
        "classifier": {"n_pos_train": len(pos_train), "n_neg_train": len(neg_train), "steps": a.classifier_steps,
                       "share_judged_concept": {k: round(v, 3) for k, v in judged.items()},
                       "n": {k: len(v) for k, v in val.items()}, "balanced_accuracy": round(acc, 3),
                       "balanced_accuracy_vae_roundtrip": round(acc_rt, 3),
                       "training_images": "each image as is, after a VAE round trip, and blurred after it"},
        "eval": {"seeds": f"{seeds[0]}..{seeds[-1]}", "sample_steps": a.sample_steps, "cfg": a.cfg,
                 "share_judged_concept": {k: round(v, 3) for k, v in share.items()},
                 "mean_p_concept": {k: round(v, 3) for k, v in mean_p.items()},
                 "generation_seconds": round(gen_s, 1)},
        "prior_preservation": {k: round(v, 4) for k, v in prior.items()},
        "grid_rows": ["instance images", f"base '{INSTANCE_PROMPT}'", f"DreamBooth '{INSTANCE_PROMPT}'",
                      f"base '{CLASS_PROMPT}'", f"DreamBooth '{CLASS_PROMPT}'"],
        "total_seconds_this_invocation": round(time.time() - t0, 1),
    }
    (a.docs / "dreambooth-demo.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
