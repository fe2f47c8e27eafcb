import torch
from opensd.adapters.controlnet import load_controlnet
from opensd.checkpoints.files import save_safetensors
from test_qwen_image_blockwise import _blockwise, _patched, _run, files, ctx, env  # noqa: F401


def _try(name, f):
    try:
        print("CASE", name, "RAN", getattr(f(), "shape", ""))
    except Exception as e:
        print("CASE", name, type(e).__name__, str(e)[:300])


def test_probe(env, ctx, files):
    pipe = env[1]
    sd = {k: v.contiguous() for k, v in _blockwise().state_dict().items()}
    bad = dict(sd); bad["img_in.weight"] = torch.zeros(7)
    save_safetensors(bad, files / "flat.safetensors")
    bad2 = dict(sd); bad2["img_in.weight"] = torch.zeros(3, 64)
    save_safetensors(bad2, files / "narrow.safetensors")
    bad3 = {k: v for k, v in sd.items() if "controlnet_blocks.1" not in k}
    save_safetensors(bad3, files / "missing.safetensors")
    bad4 = dict(sd); bad4["controlnet_blocks.5.weight"] = torch.zeros(3, 3)
    save_safetensors(bad4, files / "extra.safetensors")
    for n in ("flat", "narrow", "missing", "extra"):
        _try(n + " load_controlnet", lambda: load_controlnet(files / f"{n}.safetensors", pipe))
        _try(n + " graph", lambda: _run(ctx, _patched(name=f"{n}.safetensors")))
    g = _patched(image=["45", 0]); g["45"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["41", 0], "amount": 3}}
    _try("hint batch 3", lambda: _run(ctx, g))
    g = _patched(image=["45", 0]); g["45"] = {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1, "batch_size": 1, "color": 0}}
    _try("hint 1x1", lambda: _run(ctx, g))
