"""LaMa object removal as comfyui-inpaint-nodes runs it (INPAINT_LoadInpaintModel, INPAINT_InpaintWithModel):
big-lama files read without running code (TorchScript's data.pkl by our own restricted unpickler), and
the fill equal to the spandrel network called directly with comfyui-inpaint-nodes' pre- and
post-processing written out here: square by padding bottom/right (reflect), nearest-exact to 256,
mask >= 0.99, the model, bilinear back, the padding cut, laid over the input where mask >= 0.99."""
import io
import zipfile

import pytest
import torch
import torch.nn.functional as F
from lama_files import lama_state_dict, random_lama, tiny_lama, write_lama_safetensors, write_lama_torchscript
from safetensors.torch import save_file
from upscaler_files import srvgg, write_safetensors

from opensd.checkpoints.torchscript_weights import is_torchscript, read_torchscript_weights
from opensd.errors import CheckpointError, InvalidArgument
from opensd.inpaint_models import inpaint_with_model, load_inpaint_model
from opensd.library.models_dir import ModelFolders
from opensd.upscale import load_upscale_model, tiled_scale
from opensd.workflows import object_info
from opensd.workflows.nodes_inpaint_models import inpaint, load_model
from opensd.workflows.types import ExecutionContext, NodeCall

MODULE = "custom_nodes.comfyui-inpaint-nodes"


def _call(models_root, events=None):
    ctx = ExecutionContext(ModelFolders(models_root, include_builtin=False), lambda name: None,
                           models_root / "out", models_root / "in")
    return NodeCall(ctx, "1", {}, (lambda kind, data: events.append(data)) if events is not None else
                    (lambda kind, data: None))


def reference_fill(net, image, mask, size=256, seed=0):
    """comfyui-inpaint-nodes' InpaintWithModel for one (1, H, W, 3) image and (H, W) mask, written out."""
    x, m = image.permute(0, 3, 1, 2), mask[None, None]
    h, w = x.shape[-2:]
    side = max(h, w)
    rows = torch.tensor([i if i < h else 2 * (h - 1) - i for i in range(side)])  # reflect (pads < size here)
    cols = torch.tensor([j if j < w else 2 * (w - 1) - j for j in range(side)])
    xs, ms = x[..., rows[:, None], cols[None, :]], m[..., rows[:, None], cols[None, :]]
    xs = F.interpolate(xs, size=size, mode="nearest-exact")
    ms = (F.interpolate(ms, size=size, mode="nearest-exact") >= 0.99).float()
    torch.manual_seed(seed)  # MAT draws dropout masks at inference; LaMa draws nothing
    with torch.no_grad():
        out = net(xs, ms).clamp(0, 1)  # as spandrel's descriptor call clamps
    out = F.interpolate(out, size=side, mode="bilinear")[..., :h, :w]
    keep = (m >= 0.99).float()
    return (x + (out - x) * keep).permute(0, 2, 3, 1)


def _image_and_mask(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, h, w, 3, generator=g)
    mask = torch.zeros(h, w)
    mask[h // 4:h // 2, w // 3:w // 2] = 1.0
    mask[h // 2, w // 3:w // 2] = 0.995  # fills (>= 0.99)
    mask[h // 2 + 1, w // 3:w // 2] = 0.9  # a soft edge: kept
    return image, mask


def test_object_info_is_comfyui_inpaint_nodes(tmp_path):
    (tmp_path / "inpaint").mkdir()
    (tmp_path / "inpaint" / "big-lama.pt").write_bytes(b"x")
    info = object_info(_call(tmp_path).ctx)
    load, run = info["INPAINT_LoadInpaintModel"], info["INPAINT_InpaintWithModel"]
    assert load["input"]["required"] == {"model_name": [["big-lama.pt"]]}
    assert (load["output"], load["output_name"], load["python_module"]) == (["INPAINT_MODEL"], ["inpaint model"],
                                                                             MODULE)
    assert run["input"]["required"] == {"inpaint_model": ["INPAINT_MODEL"], "image": ["IMAGE"], "mask": ["MASK"],
                                        "seed": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                                         "step": 1}]}
    assert run["input"]["optional"] == {"optional_upscale_model": ["UPSCALE_MODEL"]}
    assert (run["output"], run["output_name"], run["python_module"]) == (["IMAGE"], ["inpainted image"], MODULE)


# --- TorchScript archives -------------------------------------------------------------------------

class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.generator = torch.nn.Sequential(_Block(), torch.nn.ReLU(), _Block())
        self.generator[2].conv = torch.nn.Conv2d(3, 3, 1)
        self.generator[2].bn.running_var.fill_(2.0)

    def forward(self, x):
        return self.generator(x)


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    net = _Net().eval()
    path = tmp_path_factory.mktemp("ts") / "small.pt"
    with torch.no_grad():
        torch.jit.trace(net, torch.rand(1, 2, 8, 8), check_trace=False).half().save(str(path))
    return net, path


def test_torchscript_weights_are_the_modules_state_dict(small_archive):
    net, path = small_archive
    assert is_torchscript(path)
    got = read_torchscript_weights(path)
    want = net.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype), k
        assert torch.equal(got[k].to(v.dtype), v.half().to(v.dtype) if v.is_floating_point() else v), k


def _rewrite(path, out, edit):
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            name, data, compress = edit(info.filename, data)
            dst.writestr(zipfile.ZipInfo(name), data, compress_type=compress)
    return out


def test_torchscript_archives_that_ask_for_code_or_are_damaged_are_refused(small_archive, tmp_path):
    _, path = small_archive
    # GLOBAL builtins.print (a callable a pickle could run), spelled out: pickle.dumps(print) would name
    # whatever replaced it in this process (Ray's tqdm patches builtins.print in a shared test worker)
    evil = b"cbuiltins\nprint\n."

    def swap_pickle(name, data):
        return name, (evil if name.endswith("/data.pkl") else data), zipfile.ZIP_STORED

    with pytest.raises(CheckpointError, match=r"refusing to load this TorchScript archive: GLOBAL \S*\.print is not "
                                              r"plain tensor data"):
        read_torchscript_weights(_rewrite(path, tmp_path / "evil.pt", swap_pickle))

    def compress_weights(name, data):
        return name, data, zipfile.ZIP_DEFLATED if "/data/" in name else zipfile.ZIP_STORED

    with pytest.raises(CheckpointError, match="is compressed"):
        read_torchscript_weights(_rewrite(path, tmp_path / "bomb.pt", compress_weights))

    def truncate_a_weight(name, data):
        return name, (data[:-2] if name.endswith("/data/0") else data), zipfile.ZIP_STORED

    with pytest.raises(CheckpointError, match="refusing to load this TorchScript archive: storage 0 holds"):
        read_torchscript_weights(_rewrite(path, tmp_path / "short.pt", truncate_a_weight))
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    (tmp_path / "plain.pt").write_bytes(buf.getvalue())
    assert not is_torchscript(tmp_path / "plain.pt")


# --- the full-size LaMa -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lama_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    net = random_lama()
    write_lama_safetensors(net, root / "inpaint" / "big-lama.safetensors")
    write_lama_torchscript(net, root / "inpaint" / "lama" / "big-lama.pt")
    return net, root


def test_big_lama_loads_from_torchscript_and_safetensors(lama_files):
    net, root = lama_files
    want = net.state_dict()
    keys = read_torchscript_weights(root / "inpaint" / "lama" / "big-lama.pt")
    assert set(keys) == set(lama_state_dict(net))  # the traced archive's names: generator.model.N...
    for name in ("lama/big-lama.pt", "big-lama.safetensors"):
        model = load_inpaint_model(root / "inpaint" / name)
        assert model.architecture.id == "LaMa" and not model.model.training
        got = model.model.state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), name


def test_inpaint_files_are_recognised_as_such(lama_files, tmp_path):
    """opensd models add / the model report put LaMa (either file) and MAT in inpaint/."""
    from opensd.library.model_kind import LABELS, model_kind

    _, root = lama_files
    save_file({"synthesis.first_stage.conv_first.conv.resample_filter": torch.zeros(4, 4)},
              str(tmp_path / "MAT_Places512_G_fp16.safetensors"))
    for path in (root / "inpaint" / "lama" / "big-lama.pt", root / "inpaint" / "big-lama.safetensors",
                 tmp_path / "MAT_Places512_G_fp16.safetensors"):
        assert model_kind(path) == "inpaint", path
    assert LABELS["inpaint"] == "inpaint model (LaMa / MAT)"


def test_inpaint_with_model_is_spandrels_lama_with_comfys_steps(lama_files):
    """The node's output equals the network called directly with the steps written out above, and
    every pixel the mask does not fill (< 0.99) is the input's, bit for bit."""
    net, root = lama_files
    (model,) = load_model(_call(root), "big-lama.safetensors")
    image, mask = _image_and_mask(40, 56)
    events = []
    (out,) = inpaint(_call(root, events), model, image, mask, 834729)
    assert out.shape == image.shape and events == [{"value": 1, "max": 1, "node": "1"}]
    want = reference_fill(net, image, mask)
    assert torch.allclose(out, want, atol=1e-6, rtol=0)
    kept = mask < 0.99
    assert torch.equal(out[0][kept], image[0][kept])
    assert (out[0][~kept] - image[0][~kept]).abs().mean() > 0.05  # the fill is the model's, not the input


def test_mat_with_the_optional_package(tmp_path):
    """MAT as Krita downloads it (keys without spandrel's "model." prefix, fp16), when spandrel_extra_arches
    is installed (opensd[mat]; not in the test extra: its MAT code is non-commercial). A CPU forward of
    MAT's 512 x 512 takes about a minute."""
    arches = pytest.importorskip("spandrel_extra_arches.architectures.MAT")
    sd = {k.removeprefix("model."): (v.half() if v.is_floating_point() else v).contiguous().clone()
          for k, v in arches.MAT().state_dict().items()}
    (tmp_path / "inpaint").mkdir()
    save_file(sd, str(tmp_path / "inpaint" / "MAT_Places512_G_fp16.safetensors"))
    (model,) = load_model(_call(tmp_path), "MAT_Places512_G_fp16.safetensors")
    assert model.architecture.id == "MAT"
    image, mask = _image_and_mask(40, 56)
    (out,) = inpaint(_call(tmp_path), model, image, mask, 7)
    assert torch.allclose(out, reference_fill(model.model, image, mask, size=512, seed=7), atol=1e-5, rtol=0)
    kept = mask < 0.99
    assert torch.equal(out[0][kept], image[0][kept])


# --- the fill's steps, on a small LaMa ------------------------------------------------------------------

def test_a_mask_batch_of_one_fills_every_image_and_seed_does_not_change_lama():
    model = tiny_lama()
    image = torch.cat([_image_and_mask(24, 20, seed=s)[0] for s in (1, 2)])
    _, mask = _image_and_mask(24, 20)
    out = inpaint_with_model(model, image, mask[None], seed=1)
    for i in range(2):
        assert torch.allclose(out[i:i + 1], reference_fill(model.model, image[i:i + 1], mask), atol=1e-6, rtol=0)
    assert torch.equal(inpaint_with_model(model, image, mask, seed=99), out)


def test_an_upscaler_runs_on_the_models_output_before_it_is_resized_back(tmp_path):
    upscaler = load_upscale_model(write_safetensors(tmp_path / "2x.safetensors", srvgg(scale=2, seed=5)))
    model = tiny_lama()
    image, mask = _image_and_mask(20, 20)
    out = inpaint_with_model(model, image, mask, upscaler=upscaler)
    with torch.no_grad():
        x = F.interpolate(image.permute(0, 3, 1, 2), size=256, mode="nearest-exact")
        m = (F.interpolate(mask[None, None], size=256, mode="nearest-exact") >= 0.99).float()
        big = tiled_scale(model.model(x, m), upscaler, 2, 512, 32).clamp(0, 1)
    filled = F.interpolate(big, size=20, mode="bilinear").permute(0, 2, 3, 1)
    keep = (mask >= 0.99)[None, ..., None]
    assert torch.allclose(out, torch.where(keep, filled, image), atol=1e-6, rtol=0)


# --- errors ---------------------------------------------------------------------------------------------

def test_bad_inputs_are_named(tmp_path):
    model = tiny_lama()
    image, mask = _image_and_mask(24, 20)
    with pytest.raises(InvalidArgument, match="mask: 21x24 does not match the image's 20x24"):
        inpaint_with_model(model, image, torch.zeros(24, 21))
    with pytest.raises(InvalidArgument, match=r"image: an RGB image batch \(B, H, W, 3\)"):
        inpaint_with_model(model, torch.rand(1, 24, 20, 4), mask)
    upscaler = load_upscale_model(write_safetensors(tmp_path / "2x.safetensors", srvgg(scale=2, seed=5)))
    with pytest.raises(InvalidArgument, match=r"inpaint_model: a \S+ model is not an inpaint model \(LaMa or MAT\)"):
        inpaint_with_model(upscaler, image, mask)

    folder = tmp_path / "models" / "inpaint"
    folder.mkdir(parents=True)
    call = _call(tmp_path / "models")
    with pytest.raises(InvalidArgument, match="inpaint"):
        load_model(call, "nothere.pt")
    write_safetensors(folder / "2x-compact.safetensors", srvgg(scale=2, seed=5))
    with pytest.raises(CheckpointError, match=r"is a .+ model, not an inpaint model \(LaMa or MAT\)"):
        load_model(call, "2x-compact.safetensors")
    save_file({"some.weight": torch.zeros(2, 2)}, str(folder / "other.safetensors"))
    with pytest.raises(CheckpointError, match="is not an inpaint model we know"):
        load_model(call, "other.safetensors")
    save_file({"synthesis.first_stage.conv_first.conv.resample_filter": torch.zeros(4, 4)},
              str(folder / "MAT_Places512_G_fp16.safetensors"))
    try:
        import spandrel_extra_arches  # noqa: F401
    except ImportError:
        with pytest.raises(CheckpointError, match=r"MAT needs the optional package spandrel_extra_arches \(pip "
                                                  r"install 'opensd\[mat\]'"):
            load_model(call, "MAT_Places512_G_fp16.safetensors")

