"""DeepDanbooru (tagging/deepdanbooru.py): the layout read from the weights' shapes (the full-size table
on the meta device, against values from A1111's port), the forward pass against a literal re-wiring of
a few blocks, the preprocessing against values worked out by hand, and a tiny model with the real key
names whose scores are set by hand, run through the API, the CLI and the errors a wrong file gets."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from opensd.errors import InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.tagging import deepdanbooru as dd
from opensd.tagging.tag_text import a1111_caption

FULL_WIDTHS = [256, 512, 1024, 1024, 2048, 4096]
TINY_WIDTHS = [8, 8, 16, 16, 16, 32]
TAGS = ["1girl", "long_hair", "ganyu_(genshin_impact)", "rating:safe", "low_score"]
LOGITS = [2.0, 0.5, 3.0, 5.0, -1.0]  # sigmoid: 0.881, 0.622, 0.953, 0.993, 0.269


def tiny_weights(seed=0, widths=TINY_WIDTHS, tags=len(TAGS)):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (1.0 / np.sqrt(np.prod(s[1:])) if len(s) == 4 else 0.05)
            for k, s in dd.expected_shapes(4, widths, tags).items()}


def controlled_model():
    """Every weight zero but the last block's bias on channel 0 (so the features are 1 there, 0 elsewhere)
    and the head's column 0: the scores are sigmoid(LOGITS) whatever the picture."""
    sd = {k: torch.zeros_like(v) for k, v in tiny_weights().items()}
    sd["n_Conv_177.bias"][0] = 1.0
    sd["n_Conv_178.weight"][:, 0, 0, 0] = torch.tensor(LOGITS)
    return {**sd, "tags": list(TAGS)}


# ------------------------------------------------------------------------------------------ layout

def test_the_full_size_layout_is_a1111s_table():
    shapes = dd.expected_shapes(64, FULL_WIDTHS, 9176)
    assert len(shapes) == 179 * 2 - 1  # n_Conv_0..178, the head without a bias
    # values from A1111's DeepDanbooruModel (modules/deepbooru_model.py)
    table = {1: (256, 64, 1, 1), 2: (64, 64, 1, 1), 3: (64, 64, 3, 3), 11: (512, 256, 1, 1),
             13: (128, 128, 3, 3), 36: (1024, 512, 1, 1), 97: (256, 1024, 1, 1), 99: (1024, 256, 1, 1),
             100: (1024, 1024, 1, 1), 157: (1024, 256, 1, 1), 158: (2048, 1024, 1, 1), 160: (512, 512, 3, 3),
             168: (4096, 2048, 1, 1), 170: (1024, 1024, 3, 3), 177: (4096, 1024, 1, 1), 178: (9176, 4096, 1, 1)}
    assert {i: shapes[f"n_Conv_{i}.weight"] for i in table} == table
    plan = dd.plan(shapes)
    assert len(plan.blocks) == 57 and plan.head == 178 and plan.tags == 9176
    assert {b.shortcut for b in plan.blocks} == {None, 1, 11, 36, 100, 158, 168}
    assert [b.body[1] for b in plan.blocks if b.stride == 2] == [13, 38, 98, 160, 170]  # A1111's stride-2 3x3s
    assert next(b for b in plan.blocks if b.shortcut == 100).body == (97, 98, 99)
    # the whole network's shapes flow on the meta device: (1, 512, 512, 3) -> 9176 scores
    weights = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    tagger = dd.from_state_dict({**weights, "tags": [f"t{i}" for i in range(9176)]}, "full", device="meta")
    assert tagger.network(torch.empty(1, 512, 512, 3, device="meta")).shape == (1, 9176)


# ------------------------------------------------------------------------------------------ forward

def _conv(w, i, x, stride=1, pad=(0, 0, 0, 0), value=0.0):
    return F.conv2d(F.pad(x, list(pad), value=value), w[f"n_Conv_{i}.weight"], w.get(f"n_Conv_{i}.bias"), stride)


def _ref_block(w, x, a, b, c, short=None, stride=1):
    """A bottleneck block wired as A1111's port writes it out (its literal paddings)."""
    pad3 = (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1)
    y = _conv(w, c, F.relu(_conv(w, b, F.relu(_conv(w, a, x)), stride, pad3)))
    return F.relu(y + (x if short is None else _conv(w, short, x, stride)))


def _ref_forward(w, nhwc):
    x = nhwc.permute(0, 3, 1, 2)
    x = F.relu(_conv(w, 0, x, 2, (2, 3, 2, 3)))
    x = F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=float("-inf")), 3, 2)
    i = 1
    for stage, repeats in enumerate((2, 7, 19, 19, 2, 2)):
        stride = 1 if stage == 0 else 2
        if stage == 3:  # the export numbered this stage's shortcut after its block
            x, i = _ref_block(w, x, i, i + 1, i + 2, i + 3, stride), i + 4
        else:
            x, i = _ref_block(w, x, i + 1, i + 2, i + 3, i, stride), i + 4
        for _ in range(repeats):
            x, i = _ref_block(w, x, i, i + 1, i + 2), i + 3
    assert i == 178
    return torch.sigmoid(_conv(w, 178, x).mean(dim=(2, 3)))


def test_the_forward_pass_matches_a1111s_wiring():
    w = tiny_weights()
    tagger = dd.from_state_dict({**w, "tags": list(TAGS)}, "tiny")
    net = tagger.network
    x = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    nchw = x.permute(0, 3, 1, 2)
    # the stem and the first three blocks, one by one
    stem = F.max_pool2d(F.pad(F.relu(_conv(w, 0, nchw, 2, (2, 3, 2, 3))), [0, 1, 0, 1], value=float("-inf")), 3, 2)
    torch.testing.assert_close(net.features(nchw, 0), stem)
    b1 = _ref_block(w, stem, 2, 3, 4, short=1)
    torch.testing.assert_close(net.features(nchw, 1), b1)
    b2 = _ref_block(w, b1, 5, 6, 7)
    torch.testing.assert_close(net.features(nchw, 2), b2)
    # the fourth stage's first block: shortcut n_Conv_100 applied to the block's input, stride 2
    h = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    block = next(b for b in net.plan.blocks if b.shortcut == 100)
    torch.testing.assert_close(net.block(h, block), _ref_block(w, h, 97, 98, 99, short=100, stride=2))
    # the whole network
    torch.testing.assert_close(net(x), _ref_forward(w, x))
    assert (net(x) - net(torch.rand(1, 128, 128, 3))).abs().max() > 0.01  # the picture matters


# ------------------------------------------------------------------------------------------ preprocessing

def test_preprocessing_is_a1111s_resize_and_fill_rgb_over_255():
    wide = Image.new("RGB", (512, 256), (255, 0, 0))
    wide.paste((0, 0, 51), (0, 128, 512, 256))  # bottom half
    x = dd.preprocess(wide)
    assert x.shape == (1, 512, 512, 3) and x.dtype == np.float32
    # centred at rows 128..383; the rows above stretched from its top edge, below from its bottom edge
    np.testing.assert_array_equal(x[0, :256], np.broadcast_to([1.0, 0.0, 0.0], (256, 512, 3)))
    np.testing.assert_array_equal(x[0, 256:], np.broadcast_to(np.float32([0, 0, 51]) / 255, (256, 512, 3)))
    # 341 rows (odd): placed at row 512 // 2 - 341 // 2 = 86 as A1111 places it (not 85, half the border)
    banded = Image.new("RGB", (512, 341), (0, 0, 255))
    banded.paste((255, 0, 0), (0, 0, 512, 4))  # its top 4 rows red
    red = dd.preprocess(banded)[0, :, :, 0].min(axis=1) == 1.0
    assert red[:90].all() and not red[90:].any()  # 86 rows of border stretched from the red edge, then 4
    # a small, tall, transparent picture: scaled up, alpha dropped (RGB as stored, not flattened on white)
    tall = Image.new("RGBA", (50, 100), (102, 51, 0, 0))
    np.testing.assert_allclose(dd.preprocess(tall)[0], np.broadcast_to([0.4, 0.2, 0.0], (512, 512, 3)), atol=1e-6)
    with pytest.raises(InvalidArgument, match="expected an image"):
        dd.preprocess(np.zeros((4, 4, 3)))


# ------------------------------------------------------------------------------------------ files, API, CLI

def install(root, obj, name=dd.FILE):
    folder = root / "models" / "torch_deepdanbooru"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(obj, folder / name)
    return folder / name


def test_a_controlled_model_scores_and_captions(tmp_path):
    path = install(tmp_path, controlled_model())
    folders = ModelFolders(tmp_path / "models", include_builtin=False)
    assert dd.default_path(folders) == path
    tagger = dd.load(path)
    assert dd.load(path) is tagger  # kept loaded
    scores = dd.score(tagger, Image.new("RGB", (300, 200), (5, 6, 7)))
    assert scores.names == tuple(TAGS) and scores.categories == (0, 0, 0, 9, 0)
    np.testing.assert_allclose(scores.probs, 1 / (1 + np.exp(-np.array(LOGITS))), rtol=1e-6)
    assert a1111_caption(scores) == "1girl, ganyu \\(genshin impact\\), long hair"
    assert a1111_caption(scores, sort_alpha=False, ranks=True) == \
        "(ganyu \\(genshin impact\\):0.953), (1girl:0.881), (long hair:0.622)"


def test_wrong_files_are_refused_in_words(tmp_path):
    from opensd.checkpoints.files import save_safetensors

    good = controlled_model()
    cases = {
        "no_tags.pt": ({k: v for k, v in good.items() if k != "tags"}, "tag list .* is missing"),
        "few_tags.pt": ({**good, "tags": TAGS[:3]}, "head scores 5 tags but its tag list names 3"),
        "sd.pt": ({"model.diffusion_model.x.weight": torch.zeros(2), "tags": TAGS},
                  "n_Conv_0.weight should be a 7x7 convolution.*missing"),
        "bent.pt": ({**good, "n_Conv_98.weight": torch.zeros(4, 4, 1, 1)}, r"n_Conv_97\.\.100 do not make"),
        "extra.pt": ({**good, "fc.weight": torch.zeros(2, 2)}, "no place for \\(fc.weight\\)"),
        "list.pt": ([1, 2], "holds a list"),
    }
    for name, (obj, message) in cases.items():
        with pytest.raises(InvalidArgument, match=message):
            dd.read(install(tmp_path, obj, name))
    save_safetensors({"n_Conv_0.weight": torch.zeros(4, 3, 7, 7)}, tmp_path / "st.pt")
    with pytest.raises(InvalidArgument, match="is a safetensors file"):
        dd.read(tmp_path / "st.pt")
    with pytest.raises(InvalidArgument, match="cannot run on device 'tpu9'"):
        dd.from_state_dict(good, "good.pt", device="tpu9")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(InvalidArgument, match="deepdanbooru: junk.pt: not a weight file"):
        dd.read(tmp_path / "junk.pt")


class Payload:  # a pickled object of a class outside the restricted unpickler's list
    def __reduce__(self):
        return (print, ("ran",))


def test_a_pickle_asking_for_code_is_refused_not_run(tmp_path, capsys):
    path = install(tmp_path, {**controlled_model(), "x": Payload()}, "evil.pt")
    # print, or the print another library in the process put in its place (Ray's tqdm_ray does)
    refused = r"deepdanbooru: evil.pt: refusing to load: the pickle asks for '[\w.]*print'"
    with pytest.raises(InvalidArgument, match=refused):
        dd.read(path)
    assert "ran" not in capsys.readouterr().out


def _png_b64(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_the_interrogate_api_runs_deepdanbooru_when_installed(tmp_path):
    from fastapi.testclient import TestClient
    from server_live import BASE, models_dir

    from opensd.server.app import create_app
    from opensd.server.settings import Settings

    models = models_dir(tmp_path)
    settings = Settings(models_dir=models, outputs_dir=tmp_path / "out", max_body_bytes=1 << 20, start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        body = {"image": _png_b64(Image.new("RGB", (64, 48), (1, 2, 3))), "model": "deepdanbooru"}
        r = c.post("/sdapi/v1/interrogate", json=body)  # nothing installed: says where both kinds go
        assert r.status_code == 422
        assert "torch_deepdanbooru/" in r.json()["detail"] and "wd14_tagger/" in r.json()["detail"]
        install(tmp_path, controlled_model())
        r = c.post("/sdapi/v1/interrogate", json=body)
        assert r.status_code == 200 and r.json() == {"caption": "1girl, ganyu \\(genshin impact\\), long hair"}
        change = {"interrogate_deepbooru_score_threshold": 0.9, "interrogate_return_ranks": True}
        assert c.post("/sdapi/v1/options", json=change).status_code == 200
        r = c.post("/sdapi/v1/interrogate", json=body)
        assert r.json() == {"caption": "(ganyu \\(genshin impact\\):0.953)"}
        install(tmp_path, {"tags": TAGS})  # broken in place: refused in words
        r = c.post("/sdapi/v1/interrogate", json=body)
        assert r.status_code == 422 and "not a DeepDanbooru model" in r.json()["detail"]


def test_the_cli_tags_with_deepdanbooru(tmp_path, capsys):
    from opensd.cli import main

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    args = ["tag", str(tmp_path / "a.png"), "--models-dir", str(tmp_path / "models"), "--model", "deepdanbooru"]
    (tmp_path / "models").mkdir()
    assert main(args) == 2 and "no DeepDanbooru model is installed" in capsys.readouterr().err
    install(tmp_path, controlled_model())
    assert main(args) == 0  # above 0.5 (A1111's default), in list order, ratings left out
    assert capsys.readouterr().out == "1girl, long hair, ganyu \\(genshin impact\\)\n"
    assert main(args + ["--threshold", "0.9", "--underscores"]) == 0
    assert capsys.readouterr().out == "ganyu_\\(genshin_impact\\)\n"
