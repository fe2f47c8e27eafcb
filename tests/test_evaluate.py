"""The evaluation command: classifier, metrics and an end-to-end run on a random tiny checkpoint
and a fake emoji dataset (no real data, no real model)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from opensd.training import emoji_data as ED
from opensd.training import evaluate as EV


# -- synthetic data -----------------------------------------------------------------------------

COLOURS = [(220, 30, 30), (30, 60, 220), (30, 170, 40)]


def shapes(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """White images with one coloured shape; class = colour (3) × shape (square / disc) → 6 classes.
    Position and size vary, so the classifier must generalise, not memorise pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.full((n, size, size, 3), 255, np.uint8)
    labels = rng.integers(0, 6, n)
    for i, y in enumerate(labels):
        r = rng.integers(9, 16)
        cy, cx = rng.integers(r + 2, size - r - 2, 2)
        if y % 2 == 0:
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        else:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[i][m] = COLOURS[y // 2]
    return images, labels


def write_fake_dataset(root: Path, n_train: int = 48, n_held: int = 6) -> Path:
    """A dataset dir that `load_split` accepts: shapes images, captions naming them."""
    root.mkdir(parents=True, exist_ok=True)
    names = ["red square", "red disc", "blue square", "blue disc", "green square", "green disc"]
    files = {}
    for split, n, seed in (("train", n_train, 0), ("heldout", n_held, 1)):
        images, labels = shapes(n, seed)
        np.savez(root / f"{split}.npz", images=images, concept_id=labels.astype(np.int64))
        meta = {"captions": [f"{names[y]}, shape, noto emoji style" for y in labels],
                "styles": ["google"] * n, "tones": ["none"] * n, "codes": [f"{y:04X}" for y in labels]}
        (root / f"{split}.json").write_text(json.dumps(meta), encoding="utf-8")
        for name in (f"{split}.npz", f"{split}.json"):
            data = (root / name).read_bytes()
            files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (root / "concepts.json").write_text(json.dumps([{"concept_id": i, "name": s} for i, s in enumerate(names)]))
    manifest = {"format": ED.FORMAT, "format_version": ED.FORMAT_VERSION, "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


# -- classifier ---------------------------------------------------------------------------------


def test_classifier_learns_coloured_shapes(tmp_path):
    x, y = shapes(256, seed=0)
    xt, yt = shapes(96, seed=1)
    cfg = EV.ClassifierConfig(steps=120, batch=32, lr=3e-3, warmup=10, width=8, feature_dim=32)
    model = EV.train_classifier(x, y, 6, tmp_path / "clf", cfg, progress=False)
    logits, feats = EV.classify(model, xt)
    assert logits.shape == (96, 6) and feats.shape == (96, 32)
    acc = EV.topk_accuracy(logits, yt, ks=(1, 5))
    assert acc[1] >= 0.9, acc  # chance is 1/6
    # a finished run is reused: same weights, no retraining (the Trainer resumes at its last step)
    again = EV.train_classifier(x, y, 6, tmp_path / "clf", cfg, progress=False)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_augment_keeps_shape_range_and_white_border():
    x = torch.ones(4, 3, 64, 64)
    x[:, :, 24:40, 24:40] = 0.0
    out = EV.augment(x, torch.Generator().manual_seed(0), jitter=0.0)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[:, :, :2, :], torch.ones_like(out[:, :, :2, :]), atol=1e-5)  # shifted-in area is white
    assert not torch.allclose(out, x)  # something moved


# -- metrics ------------------------------------------------------------------------------------


def test_topk_accuracy_known_values():
    logits = np.array([[0.1, 0.9, 0.0, 0.0],   # top-1 = 1
                       [0.5, 0.1, 0.3, 0.2],   # order 0, 2, 3, 1
                       [0.0, 0.0, 0.0, 1.0]])  # top-1 = 3
    labels = [1, 3, 0]
    acc = EV.topk_accuracy(logits, labels, ks=(1, 2, 3, 4))
    assert acc[1] == pytest.approx(1 / 3)   # only row 0
    assert acc[2] == pytest.approx(2 / 3)   # + row 2: label 0 ties with 1, 2; lower index first -> 2nd
    assert acc[3] == pytest.approx(1.0)     # + row 1: label 3 is 3rd
    assert acc[4] == pytest.approx(1.0)
    # equal to a brute-force argsort check on random data
    rng = np.random.default_rng(0)
    lg, lb = rng.normal(size=(200, 30)), rng.integers(0, 30, 200)
    top5 = np.argsort(-lg, axis=1, kind="stable")[:, :5]
    assert EV.topk_accuracy(lg, lb)[5] == pytest.approx(np.mean([lb[i] in top5[i] for i in range(200)]))


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8))
    s = np.cov(a, rowvar=False) + np.eye(8)
    mu = rng.normal(size=8)
    assert EV.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([3.0, -4.0, 0, 0, 0, 0, 0, 0])
    assert EV.frechet_distance(mu, s, mu + shift, s) == pytest.approx(25.0, rel=1e-8)
    # diagonal covariances: sum of (sigma1 - sigma2)^2 per axis
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    assert EV.frechet_distance(np.zeros(3), s1, np.zeros(3), s2) == pytest.approx(1 + 0 + 4)
    # rank-deficient covariances (fewer samples than dimensions) still give a finite, symmetric value
    f1, f2 = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) + 1
    d12, d21 = EV.feature_frechet(f1, f2), EV.feature_frechet(f2, f1)
    assert np.isfinite(d12) and d12 == pytest.approx(d21, rel=1e-6) and d12 > 10
    assert EV.feature_frechet(f1, f1) == pytest.approx(0.0, abs=1e-6)


def test_derangement_avoids_own_concept():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5, 5, 5, 6])
    p = EV.derangement(labels, seed=3)
    assert sorted(p) == list(range(len(labels)))
    assert not np.any(labels[p] == labels)


def test_same_concept_indices():
    train_ids = np.array([5, 3, 5, 7, 3, 3])
    idx = EV.same_concept_indices(train_ids, np.array([3, 5, 9, 7, 3]), seed=0)
    assert idx[2] == -1 and idx[3] == 3
    assert all(train_ids[i] == c for i, c in zip(idx, [3, 5, 9, 7, 3]) if i >= 0)


# -- end to end -----------------------------------------------------------------------------------


def test_command_end_to_end_on_random_checkpoint(tmp_path, monkeypatch):
    from opensd.library.synthetic import write_random_checkpoint
    from opensd.pipeline.pipeline import Pipeline

    model = write_random_checkpoint(tmp_path / "tiny.safetensors")
    data = write_fake_dataset(tmp_path / "data")
    out = tmp_path / "eval"
    calls = []
    real_txt2img = Pipeline.txt2img

    def counting(self, prompt, *a, **k):
        calls.append((prompt, k["seed"]))
        return real_txt2img(self, prompt, *a, **k)

    monkeypatch.setattr(Pipeline, "txt2img", counting)
    argv = ["--model", str(model), "--data", str(data), "--out", str(out), "--steps", "2", "--limit", "4",
            "--classifier-steps", "30", "--classifier-batch", "16", "--speed-repeats", "2",
            "--speed-threads", "1", "--quiet"]
    assert EV.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert res["n_heldout_used"] == 4 and res["steps"] == 2
    # generation: 4 held-out captions with seeds 1000..1003, + speed (1 warm-up + 2 timed)
    held = ED.load_split(data, "heldout")
    assert calls[:4] == [(c, 1000 + i) for i, c in enumerate(held.captions[:4])]
    assert len(calls) == 4 + 3
    speed = res["speed"]
    assert [s["threads"] for s in speed] == [1] and len(speed[0]["times_s"]) == 2
    assert speed[0]["min_s"] <= speed[0]["median_s"] <= speed[0]["max_s"]
    # the reported accuracies are those of the saved classifier on the real held-out images
    clf = EV.ConceptNet(6, EV.ClassifierConfig.width, EV.ClassifierConfig.feature_dim)
    clf.load_state_dict(torch.load(out / "classifier" / "classifier.pt", weights_only=True))
    acc = EV.topk_accuracy(EV.classify(clf, held.images[:4])[0], held.concept_ids[:4])
    assert res["adherence"]["real_heldout"] == {"top1": acc[1], "top5": acc[5]}
    a = res["adherence"]
    assert a["target_met"] == (a["generated_heldout_captions"]["top5"] >= 0.6 * a["real_heldout"]["top5"])
    assert res["frechet"]["generated_vs_real_heldout"] > 1e-3  # a random model's images are not the real ones
    assert "(a) real held-out images" in md and "not Inception-FID" in md
    # a second run reuses the cached images and the trained classifier: only the speed calls run
    calls.clear()
    assert EV.main(argv[:-5] + ["--speed-repeats", "0", "--quiet"]) == 0
    assert calls == []
    res2 = json.loads((out / "results.json").read_text())
    assert res2["adherence"] == res["adherence"] and res2["speed"] == []
