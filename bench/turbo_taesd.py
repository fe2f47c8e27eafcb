"""A Turbo-class image on this machine: SD 1.5-size model, 1 step at CFG 1 (one UNet call), 512x512,
decoded by the tiny autoencoder (--vae-decoder taesd), against the same with the full VAE decode.

    python bench/turbo_taesd.py [--rounds 5]

Random weights at full size (a random SD 1.5 checkpoint and TAESD decoder written to a temporary
folder; a distilled Turbo model has the same shapes and cost). The whole txt2img call is timed:
prompt encoding, the UNet step, the decode, PNG-ready image; the two variants interleaved, median.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_speed as E  # noqa: E402  (puts src/ on sys.path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import torch
    from opensd.checkpoints import detect as D
    from opensd.checkpoints.files import save_safetensors
    from opensd.models.config import sd1
    from opensd.models.stable_diffusion import StableDiffusion
    from opensd.models.taesd import TinyAutoencoder
    from opensd.pipeline.pipeline import load

    cfg = sd1()
    with tempfile.TemporaryDirectory() as tmp:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in StableDiffusion(cfg).state_dict().items()}
        save_safetensors({k: E._random_tensor(k, s, torch.float32).half() for k, s in shapes.items()},
                         Path(tmp) / "sd15-random.safetensors", metadata=D.metadata_for(cfg))
        with torch.device("meta"):
            tiny_shapes = {k: tuple(v.shape) for k, v in TinyAutoencoder(4, encoder=False).decoder.state_dict().items()}
        save_safetensors({k: E._random_tensor(k, s, torch.float32) for k, s in tiny_shapes.items()},
                         Path(tmp) / "taesd_decoder.safetensors")
        pipe = load(Path(tmp) / "sd15-random.safetensors")
        pipe.use_tiny_vae([Path(tmp) / "taesd_decoder.safetensors"])
    print(pipe.precision.line(pipe.device), flush=True)
    times = {"taesd": [], "full": []}
    loads = [os.getloadavg()[0]]
    for decoder in times:  # warm-up
        pipe.vae_decoder = decoder
        pipe.txt2img("a lighthouse at dusk", steps=1, cfg=1, seed=1, width=512, height=512)
    for _ in range(args.rounds):
        for decoder in times:
            pipe.vae_decoder = decoder
            t0 = time.perf_counter()
            pipe.txt2img("a lighthouse at dusk", steps=1, cfg=1, seed=1, width=512, height=512)
            times[decoder].append(time.perf_counter() - t0)
        loads.append(os.getloadavg()[0])
    for decoder, t in times.items():
        print(f"1 step, CFG 1, 512x512, {decoder} decode: median {statistics.median(t):.2f} s "
              f"(rounds {', '.join(f'{x:.2f}' for x in t)})")
    print(f"{torch.get_num_threads()} threads; 1-min load before and after each round: "
          f"{', '.join(f'{x:.1f}' for x in loads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
