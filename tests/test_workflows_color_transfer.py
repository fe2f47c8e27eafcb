"""ComfyUI's ColorTransfer (comfy_extras/nodes_post_processing.py): Lab as kornia computes it (checked
against published Lab values and a float64 rewrite of the formulas here), Reinhard and MKL checked by
what they promise (the result's Lab mean/std or covariance is the reference's), histogram matching
against a table worked by hand, and the source_stats modes by their pooling (uniform on equal-sized
frames = per_frame on the frames laid side by side)."""
import numpy as np
import pytest
import torch
from test_workflows_object_info import check_object_info

from opensd.errors import InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.pipeline import color_transfer as ct
from opensd.workflows import ExecutionContext, execute
from opensd.workflows.nodes_color_transfer import color_transfer

PER_FRAME = {"source_stats": "per_frame"}
UNIFORM = {"source_stats": "uniform"}


def _lab64(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) -> Lab, the formulas written out in float64 (D65 white 0.95047, 1, 1.08883)."""
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(np.maximum(xyz, 0.008856)), 7.787 * xyz + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _lab(image: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, 3) -> Lab pixels (B, 3, H*W)."""
    return ct.rgb_to_lab(image.permute(0, 3, 1, 2)).flatten(2)


def _mid(*shape, seed=0):
    """Colours well inside the gamut, so a moderate transfer needs no clipping."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(*shape, generator=g)


def test_lab_matches_published_values_and_the_formulas():
    red, white, black = (torch.tensor(c, dtype=torch.float32).view(1, 3, 1, 1) for c in
                         ([1.0, 0, 0], [1.0, 1, 1], [0.0, 0, 0]))
    torch.testing.assert_close(ct.rgb_to_lab(red).flatten(), torch.tensor([53.2408, 80.0925, 67.2032]),
                               atol=2e-3, rtol=0)
    assert ct.rgb_to_lab(white).flatten()[0].item() == pytest.approx(100.0, abs=1e-4)
    assert ct.rgb_to_lab(black).abs().max().item() < 1e-4
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    want = _lab64(x.permute(0, 2, 3, 1).double().numpy())
    np.testing.assert_allclose(ct.rgb_to_lab(x).permute(0, 2, 3, 1).numpy(), want, atol=2e-4)
    torch.testing.assert_close(ct.lab_to_rgb(ct.rgb_to_lab(x)), x, atol=1e-5, rtol=0)
    # out of gamut comes back clipped; fz below 0 is floored before cubing
    out = ct.lab_to_rgb(torch.tensor([50.0, 150.0, -150.0]).view(1, 3, 1, 1))
    assert out.min() >= 0 and out.max() <= 1
    assert ct.lab_to_rgb(torch.tensor([0.0, 0.0, 500.0]).view(1, 3, 1, 1)).isfinite().all()


@pytest.mark.parametrize("method", ["reinhard_lab", "mkl_lab"])
def test_lab_methods_give_the_references_statistics(method):
    target, ref = _mid(1, 6, 5, 3, seed=2), _mid(1, 4, 7, 3, seed=3) * 0.8 + 0.1
    (out,) = color_transfer(None, target, method, PER_FRAME, 1.0, ref)
    got, want = _lab(out)[0].double(), _lab(ref)[0].double()
    torch.testing.assert_close(got.mean(1), want.mean(1), atol=2e-3, rtol=0)
    if method == "reinhard_lab":
        torch.testing.assert_close(got.std(1, unbiased=False), want.std(1, unbiased=False), atol=2e-3, rtol=0)
    else:
        cov = lambda p: (p - p.mean(1, keepdim=True)) @ (p - p.mean(1, keepdim=True)).T / p.shape[1]  # noqa: E731
        torch.testing.assert_close(cov(got), cov(want), atol=5e-3, rtol=0)
    # Reinhard is a per-channel affine map of Lab: L depends on L alone
    if method == "reinhard_lab":
        src_l, out_l = _lab(target)[0, 0].double(), got[0]
        scale = want[0].std(unbiased=False) / src_l.std(unbiased=False)
        torch.testing.assert_close(out_l, (src_l - src_l.mean()) * scale + want[0].mean(), atol=2e-3, rtol=0)


def test_mkl_matrix_is_the_symmetric_map_between_covariances():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    cs, cr = a @ a.T + 0.1 * torch.eye(3, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(3, dtype=torch.float64)
    t = ct.mkl_matrix(cs, cr)
    torch.testing.assert_close(t, t.T)
    torch.testing.assert_close(t @ cs @ t.T, cr)
    assert torch.linalg.eigvalsh(t).min() > 0


def test_histogram_matching_by_hand():
    # one channel's pixels at bins 0, 0, 127, 255; the reference's at 51, 102, 153, 204 (bin centres)
    target = torch.tensor([0.0, 0.0, 0.5, 1.0]).view(1, 2, 2, 1).expand(1, 2, 2, 3).contiguous()
    ref = (torch.tensor([51, 102, 153, 204]).float() + 0.5).div(255).view(1, 2, 2, 1).expand(1, 2, 2, 3)
    (out,) = color_transfer(None, target, "histogram", PER_FRAME, 1.0, ref)
    # target CDF: 0.5 at bin 0, 0.75 at 127, 1 at 255; reference CDF reaches 0.5 at 102, 0.75 at 153, 1 at 204
    want = torch.tensor([102, 102, 153, 204]).float().div(255).view(1, 2, 2, 1).expand(1, 2, 2, 3)
    torch.testing.assert_close(out, want)
    (half,) = color_transfer(None, target, "histogram", PER_FRAME, 0.5, ref)
    torch.testing.assert_close(half, (target + want) / 2)
    (far,) = color_transfer(None, target, "histogram", PER_FRAME, 3.0, ref)  # beyond 1, then clipped
    torch.testing.assert_close(far, (target + 3 * (want - target)).clamp(0, 1))


@pytest.mark.parametrize("method", ["reinhard_lab", "mkl_lab", "histogram"])
def test_uniform_pools_the_frames_as_one_image(method):
    target, ref = _mid(2, 4, 5, 3, seed=5), _mid(2, 3, 4, 3, seed=6) ** 2
    (uniform,) = color_transfer(None, target, method, UNIFORM, 1.0, ref)
    side_by_side = torch.cat(list(target), dim=1)[None]  # (1, 4, 10, 3)
    refs_side_by_side = torch.cat(list(ref), dim=1)[None]
    (whole,) = color_transfer(None, side_by_side, method, PER_FRAME, 1.0, refs_side_by_side)
    torch.testing.assert_close(torch.cat(list(uniform), dim=1)[None], whole, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["reinhard_lab", "histogram"])
def test_target_frame_uses_one_frames_map_for_all_and_clamps_the_index(method):
    target, ref = _mid(3, 4, 4, 3, seed=7), _mid(1, 5, 5, 3, seed=8) * 0.5
    (chosen,) = color_transfer(None, target, method, {"target_index": 9, "source_stats": "target_frame"}, 1.0, ref)
    (alone,) = color_transfer(None, target[2:], method, PER_FRAME, 1.0, ref)
    torch.testing.assert_close(chosen[2:], alone)
    if method == "reinhard_lab":  # one affine map of Lab for every frame: differences scale the same
        lab_in, lab_out = _lab(target).double(), _lab(chosen).double()
        scale = (lab_out[0] - lab_out[1]) / (lab_in[0] - lab_in[1])
        torch.testing.assert_close(scale, scale[:, :1].expand_as(scale), atol=2e-3, rtol=2e-3)


def test_per_frame_pairs_frames_with_references_by_index():
    target, ref = _mid(3, 4, 4, 3, seed=9), torch.cat([_mid(1, 4, 4, 3, seed=10) * 0.5, _mid(1, 4, 4, 3, seed=11)])
    (out,) = color_transfer(None, target, "reinhard_lab", PER_FRAME, 1.0, ref)
    for i, r in ((0, 0), (1, 1), (2, 1)):  # the last reference serves the frames past it
        torch.testing.assert_close(out[i:i + 1], color_transfer(None, target[i:i + 1], "reinhard_lab", PER_FRAME,
                                                                1.0, ref[r:r + 1])[0])


def test_strength_interpolates_in_lab_and_zero_or_no_reference_is_the_input():
    target, ref = _mid(1, 4, 4, 3, seed=12), _mid(1, 4, 4, 3, seed=13) * 0.6 + 0.2
    (full,) = color_transfer(None, target, "reinhard_lab", PER_FRAME, 1.0, ref)
    (half,) = color_transfer(None, target, "reinhard_lab", PER_FRAME, 0.5, ref)
    torch.testing.assert_close(_lab(half), (_lab(full) + _lab(target)) / 2, atol=2e-3, rtol=0)
    assert color_transfer(None, target, "mkl_lab", PER_FRAME, 0.0, ref)[0] is target
    assert color_transfer(None, target, "mkl_lab", PER_FRAME, 1.0, None)[0] is target


def test_wrong_images_are_refused():
    rgb, rgba = torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4, 4)
    with pytest.raises(InvalidArgument, match="3 channels"):
        color_transfer(None, rgba, "reinhard_lab", PER_FRAME, 1.0, rgba)
    with pytest.raises(InvalidArgument, match="channels but image_ref"):
        color_transfer(None, rgb, "histogram", PER_FRAME, 1.0, rgba)
    with pytest.raises(InvalidArgument, match="image_ref must be an IMAGE"):
        color_transfer(None, rgb, "histogram", PER_FRAME, 1.0, torch.rand(4, 4))
    (ok,) = color_transfer(None, rgba, "histogram", PER_FRAME, 1.0, rgba)  # histograms take any channel count
    assert ok.shape == rgba.shape


def test_object_info_matches_comfyui():
    check_object_info("ColorTransfer", (
        {"image_target": ["IMAGE", {"tooltip": "Image(s) to apply the color transform to."}],
         "method": [["reinhard_lab", "mkl_lab", "histogram"]],
         "source_stats": ["COMFY_DYNAMICCOMBO_V3", {
             "tooltip": "per_frame: each frame matched to image_ref individually. uniform: pool stats across all "
                        "source frames as baseline, match to image_ref. target_frame: use one chosen frame as the "
                        "baseline for the transform to image_ref, applied uniformly to all frames (preserves "
                        "relative differences)",
             "options": [{"key": "per_frame", "inputs": {"required": {}}}, {"key": "uniform", "inputs": {"required": {}}},
                         {"key": "target_frame", "inputs": {"required": {"target_index": ["INT", {
                             "default": 0, "min": 0, "max": 10000, "tooltip": "Frame index used as the source "
                             "baseline for computing the transform to image_ref"}]}}}]}],
         "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]},
        ["IMAGE"], "image/postprocessing", "ColorTransfer", "comfy_extras.nodes_post_processing",
        {"optional": {"image_ref": ["IMAGE", {"tooltip": "Reference image(s) to match colors to. If not provided, "
                                                         "processing is skipped"}]},
         "output_name": ["image"],
         "description": "Match the colors of one image to another using various algorithms."}))


def test_in_a_graph_with_the_dynamic_combo(tmp_path):
    ctx = ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                           temp_dir=tmp_path / "temp")
    g = {"a": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 2, "color": 0x336699}},
         "b": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0x996633}},
         "t": {"class_type": "ColorTransfer", "inputs": {"image_target": ["a", 0], "image_ref": ["b", 0],
                                                         "method": "histogram", "source_stats": "target_frame",
                                                         "source_stats.target_index": 1, "strength": 1.0}},
         "s": {"class_type": "ImageColorToMask", "inputs": {"image": ["t", 0], "color": 0x996633}},
         "p": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}}}
    ui = execute(g, ctx)
    text = ui["p"]["text"][0]  # both frames (16 pixels each) now exactly the reference's colour
    assert text.count("1.") == 32 and "0." not in text
