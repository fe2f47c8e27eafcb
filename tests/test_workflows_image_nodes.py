"""ComfyUI's image nodes (scaling, invert, batch, crop, blend, blur, sharpen) and the extra output
nodes (SaveAnimatedWEBP, SaveImageWebsocket), against hand-computed results."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from opensd.library.models_dir import ModelFolders
from opensd.workflows import ExecutionContext, execute, validate_prompt
from opensd.workflows import nodes_image_ops as I
from opensd.workflows import nodes_output as O


def img(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_scale_by_and_to_total_pixels():
    x = img(1, 3, 5, 3)
    (out,) = I.image_scale_by(None, x, "nearest-exact", 2.0)
    assert torch.equal(out, x.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))
    (lz,) = I.image_scale_by(None, x, "lanczos", 3.0)
    pil = Image.fromarray((x[0].numpy() * 255).astype(np.uint8)).resize((15, 9), Image.LANCZOS)
    assert torch.equal(lz[0], torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
    (mp,) = I.image_scale_to_total_pixels(None, img(1, 50, 100, 3), "bilinear", 0.01)
    s = math.sqrt(int(0.01 * 1024 * 1024) / 5000)  # 10485 pixels wanted
    assert mp.shape == (1, round(50 * s), round(100 * s), 3) == (1, 72, 145, 3)


def test_invert_batch_crop():
    x = img(2, 4, 6, 3)
    assert torch.equal(I.image_invert(None, x)[0], 1 - x)
    other = torch.full((1, 8, 8, 3), 0.25)  # another size: resized (any method keeps a constant)
    (b,) = I.image_batch(None, x, other)
    assert b.shape == (3, 4, 6, 3) and torch.equal(b[:2], x) and torch.allclose(b[2], torch.full((4, 6, 3), 0.25))
    (c,) = I.image_crop(None, x, 3, 2, 2, 1)
    assert torch.equal(c, x[:, 1:3, 2:5])
    (c,) = I.image_crop(None, x, 10, 10, 50, 50)  # x, y pulled in to the last column/row
    assert torch.equal(c, x[:, 3:, 5:])


@pytest.mark.parametrize("mode,expect", [
    ("normal", 0.4), ("multiply", 0.16), ("screen", 0.44), ("overlay", 0.22),
    # soft light with b > 0.5: a + (2b - 1)(g(a) - a), g(0.2) = ((16*0.2 - 12)*0.2 + 4)*0.2 = 0.448
    ("soft_light", 0.5 * 0.2 + 0.5 * (0.2 + 0.2 * (0.448 - 0.2))),
    ("difference", 0.0),  # 0.1 + 0.5 * (0.2 - 0.6) < 0: clamped
])
def test_blend_modes(mode, expect):
    a, b = torch.full((1, 2, 2, 3), 0.2), torch.full((1, 2, 2, 3), 0.6)
    (out,) = I.image_blend(None, a, b, 0.5, mode)
    assert torch.allclose(out, torch.full_like(a, expect))


def test_blur_and_sharpen_use_comfyuis_unit_span_kernel():
    e, c = math.exp(-0.5), math.exp(-1.0)  # kernel coords -1, 0, 1: edge d=1, corner d=sqrt(2)
    total = 1 + 4 * e + 4 * c
    delta = torch.zeros(1, 5, 5, 3)
    delta[0, 2, 2] = 1.0
    (blur,) = I.image_blur(None, delta, 1, 1.0)
    expect = torch.zeros(5, 5)
    expect[1:4, 1:4] = torch.tensor([[c, e, c], [e, 1, e], [c, e, c]]) / total
    assert torch.allclose(blur[0, ..., 1], expect)
    flat = torch.full((1, 6, 6, 3), 0.3)
    assert torch.allclose(I.image_blur(None, flat, 2, 0.7)[0], flat)
    bump = torch.full((1, 5, 5, 3), 0.5)
    bump[0, 2, 2] = 0.75
    (sharp,) = I.image_sharpen(None, bump, 1, 1.0, 0.1)  # kernel -g, centre 2 - g_c: sums to 1
    assert sharp[0, 2, 2, 0].item() == pytest.approx(0.5 + 0.25 * (2 - 1 / total), abs=1e-6)
    assert sharp[0, 2, 1, 0].item() == pytest.approx(0.5 - 0.25 * e / total, abs=1e-6)
    assert sharp[0, 0, 0, 0].item() == pytest.approx(0.5, abs=1e-6)


def _call(tmp_path, events=None):
    ctx = SimpleNamespace(outputs_dir=tmp_path)
    return SimpleNamespace(ctx=ctx, emit=lambda kind, data: events.append((kind, data)),
                           progress=lambda v, m: events.append(("progress", {"value": v, "max": m})))


def test_save_animated_webp_writes_frames_and_exif_metadata(tmp_path):
    frames = torch.zeros(3, 8, 8, 3)
    for i in range(3):
        frames[i, ..., i] = 1.0  # red, green, blue
    ret = O.save_animated_webp(_call(tmp_path), frames, "anim/clip", 4.0, True, 80, "fastest",
                               prompt={"1": {"class_type": "X"}}, extra_pnginfo={"workflow": {"nodes": []}})
    assert ret["ui"] == {"images": [{"filename": "clip_00001_.webp", "subfolder": "anim", "type": "output"}],
                         "animated": (True,)}
    with Image.open(tmp_path / "anim" / "clip_00001_.webp") as im:
        exif = im.getexif()
        assert json.loads(exif[0x0110].removeprefix("prompt:")) == {"1": {"class_type": "X"}}
        assert exif[0x010F] == 'workflow:{"nodes": []}'
        colors = []
        for i in range(3):
            im.seek(i)
            colors.append(np.asarray(im.convert("RGB"))[4, 4].tolist())
            assert im.info["duration"] == 250  # 4 fps
    assert colors == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]  # lossless
    again = O.save_animated_webp(_call(tmp_path), frames[:1], "anim/clip", 4.0, False, 50, "default")
    assert again["ui"]["images"][0]["filename"] == "clip_00002_.webp" and again["ui"]["animated"] == (False,)


def test_save_image_websocket_sends_full_size_pngs_and_writes_nothing(tmp_path):
    events = []
    images = img(2, 6, 10, 3)
    ret = O.save_image_websocket(_call(tmp_path, events), images)
    assert ret == {"result": ()} and not list(tmp_path.iterdir())
    assert [k for k, _ in events] == ["progress", "image_png", "progress", "image_png"]
    assert events[2][1] == {"value": 1, "max": 2}
    sent = np.asarray(events[3][1])
    assert sent.shape == (6, 10, 3) and np.array_equal(sent, (images[1].numpy() * 255).astype(np.uint8))


def test_empty_image_is_the_colour_and_get_image_size_reads_it_back(tmp_path):
    (red,) = I.empty_image(None, 5, 3, 2, 0xFF8000)
    assert red.shape == (2, 3, 5, 3) and red.dtype == torch.float32
    assert torch.equal(red[1, 2, 4], torch.tensor([1.0, 128 / 255, 0.0]))
    assert torch.equal(I.empty_image(None, 2, 2)[0], torch.zeros(1, 2, 2, 3))
    assert I.get_image_size(None, red) == (5, 3, 2)
    # through a graph: the INT outputs drive another node's widgets
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 2, "color": 255}},
             "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
             "3": {"class_type": "EmptyImage", "inputs": {"width": ["2", 0], "height": ["2", 1],
                                                          "batch_size": ["2", 2], "color": 0}},
             "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    ctx = ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out",
                           tmp_path / "in", temp_dir=tmp_path / "temp")
    validate_prompt(graph, ctx)
    shown = execute(graph, ctx, None)["4"]["images"]
    sizes = [Image.open(tmp_path / "temp" / s["subfolder"] / s["filename"]).size for s in shown]
    assert sizes == [(40, 24), (40, 24)]


def test_repeat_and_pick_from_an_image_batch():
    from opensd.workflows import nodes_image_transform as T
    x = img(3, 2, 2, 3)
    (rep,) = T.repeat_image_batch(None, x, 2)
    assert torch.equal(rep, torch.cat([x, x]))
    assert torch.equal(T.image_from_batch(None, x, 1, 5)[0], x[1:])  # length cut at the end
    assert torch.equal(T.image_from_batch(None, x, 7, 1)[0], x[2:])  # past the end: the last
    assert torch.equal(T.image_from_batch(None, x, -2, 1)[0], x[1:2])  # counted from the end
    assert torch.equal(T.image_from_batch(None, x, -9, 2)[0], x[:2])


def test_image_rotate_turns_clockwise_and_flip_mirrors():
    from opensd.workflows import nodes_image_transform as T
    x = torch.arange(6.0).reshape(1, 2, 3, 1).repeat(1, 1, 1, 3)  # rows [0 1 2], [3 4 5]
    turned = {r: T.image_rotate(None, x, r)[0][0, :, :, 0].tolist() for r in
              ("none", "90 degrees", "180 degrees", "270 degrees")}
    assert turned == {"none": [[0, 1, 2], [3, 4, 5]], "90 degrees": [[3, 0], [4, 1], [5, 2]],
                      "180 degrees": [[5, 4, 3], [2, 1, 0]], "270 degrees": [[2, 5], [1, 4], [0, 3]]}
    assert T.image_flip(None, x, "x-axis: vertically")[0][0, :, :, 1].tolist() == [[3, 4, 5], [0, 1, 2]]
    assert T.image_flip(None, x, "y-axis: horizontally")[0][0, :, :, 1].tolist() == [[2, 1, 0], [5, 4, 3]]


def test_image_stitch_places_scales_pads_and_spaces():
    from opensd.workflows import nodes_image_transform as T
    a, b = torch.full((1, 4, 6, 3), 0.25), torch.full((2, 2, 2, 3), 0.75)
    assert T.image_stitch(None, a, "right", True, 0, "white")[0] is a  # no image2: image1 as it is
    (right,) = T.image_stitch(None, a, "right", True, 0, "white", b)
    # image2 to image1's height, its aspect kept (4 x 4); image1's batch grown by its last image
    assert right.shape == (2, 4, 10, 3) and right[:, :, :6].eq(0.25).all()
    assert torch.allclose(right[:, :, 6:], torch.full((2, 4, 4, 3), 0.75), atol=1 / 255)  # lanczos: 8 bits
    (up,) = T.image_stitch(None, a, "up", True, 0, "white", b)  # image2 first, at image1's width
    assert up.shape == (2, 10, 6, 3) and torch.allclose(up[:, :6], torch.full((2, 6, 6, 3), 0.75), atol=1 / 255)
    (left,) = T.image_stitch(None, a, "left", False, 3, "red", b)  # spacing 3 -> 4, red; pad black
    assert left.shape == (2, 4, 12, 3)
    assert left[0, 1:3, :2].eq(0.75).all() and left[0, 0, :2].eq(0).all() and left[0, 3, :2].eq(0).all()
    assert left[0, :, 2:6].tolist() == [[[1.0, 0.0, 0.0]] * 4] * 4 and left[:, :, 6:].eq(0.25).all()
    (down,) = T.image_stitch(None, a, "down", False, 2, "white", b)  # white pads and spaces
    assert down.shape == (2, 8, 6, 3) and down[:, 4:6].eq(1).all()
    assert down[:, 6:, 2:4].eq(0.75).all() and down[:, 6:, :2].eq(1).all() and down[:, 6:, 4:].eq(1).all()
    rgba = torch.cat([b, torch.full((2, 2, 2, 1), 0.5)], dim=-1)  # the RGB image gains an opaque alpha
    (mixed,) = T.image_stitch(None, a, "right", False, 2, "blue", rgba)
    assert mixed.shape == (2, 4, 10, 4) and mixed[:, :, :6, 3].eq(1).all()
    assert mixed[0, 0, 6:8].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 2


def _kornia_peak(contrast: float) -> float:
    """Peak gradient magnitude across a vertical step of `contrast` in ComfyUI's Canny units: the row
    blurred with the 5-tap Gaussian (sigma 1), then (b[x+1] - b[x-1]) * (1 + 2 + 1) / 8."""
    g = np.exp(-np.arange(-2, 3) ** 2 / 2.0)
    row = np.where(np.arange(64) >= 32, contrast, 0.0)
    blurred = np.convolve(np.pad(row, 2, mode="reflect"), g / g.sum(), mode="valid")
    return float(np.max(blurred[2:] - blurred[:-2]) * 4 / 8)


def test_canny_thresholds_are_comfyuis_gradient_fractions_with_hysteresis():
    from opensd.workflows import nodes_canny as C
    step = torch.zeros(1, 16, 64, 3)
    step[:, :, 32:] = 0.5
    peak = _kornia_peak(0.5)  # ~0.16 (a threshold in 0..255 pixel units would pass nothing here)
    (found,) = C.detect_edges(None, step, 0.02, peak - 0.01)
    assert found.shape == (1, 16, 64, 3) and torch.equal(found[..., 0], found[..., 2])
    assert set(found.unique().tolist()) == {0.0, 1.0}
    cols = found[0, :, :, 0].nonzero()[:, 1].unique().tolist()
    assert len(cols) == 1 and cols[0] in (31, 32) and found[0, :, cols[0], 0].eq(1).all()
    assert C.detect_edges(None, step, 0.02, peak + 0.01)[0].eq(0).all()
    # a weak step (between the thresholds) survives where it continues a strong one, not alone
    two = torch.zeros(1, 32, 96, 3)
    two[:, :16, 32:48] = 0.5  # a bar, strong above and weak below
    two[:, 16:, 32:48] = 0.2
    two[:, :, 72:] = 0.2  # a weak step on its own
    weak = _kornia_peak(0.2)
    (out,) = C.detect_edges(None, two, weak - 0.01, (weak + peak) / 2)
    edge = out[0, :, :, 0]
    assert edge[2:30, 30:34].sum(1).ge(1).all()  # the bar's whole left side, weak half included
    assert edge[:, 60:].eq(0).all()
    with pytest.raises(Exception, match="low_threshold: 0.5 is above high_threshold 0.4"):
        C.detect_edges(None, step, 0.5, 0.4)
