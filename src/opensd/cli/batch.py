"""`opensd batch JOBS.jsonl -o OUTDIR [--ray ADDRESS]`: many generations, resumable (distributed/batch.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import int_arg, set_threads
from .model_flags import add_models_dir_flag


def register(sub) -> None:
    p = sub.add_parser("batch", help="run many generations from a JSONL file (resumable; on Ray with --ray)",
                       description="Each line of JOBS.jsonl is an AUTOMATIC1111 /sdapi/v1/txt2img request body "
                                   "(img2img when it has init_images), e.g. {\"prompt\": \"a cat\", \"seed\": 1, "
                                   "\"steps\": 20}, scripts included: with \"script_name\": \"X/Y/Z plot\" (or "
                                   "\"Prompt matrix\", \"Prompts from file or textbox\") and A1111's script_args a "
                                   "line saves its grid and every cell. Images go to OUTDIR/txt2img-images (or "
                                   "img2img-images), grids to OUTDIR/txt2img-grids, and one line per image, grids included, to OUTDIR/manifest.jsonl "
                                   "(seed, infotext, SHA-256). A line that cannot run is reported by its number and "
                                   "the others run. Run the same command again to finish what an interrupted run left.")
    p.add_argument("jobs", type=Path, metavar="JOBS.jsonl")
    p.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUTDIR")
    add_models_dir_flag(p)
    p.add_argument("--model", "-m", help="checkpoint for lines that do not set override_settings.sd_model_checkpoint "
                                         "(a name in the models folder; default: the first listed)")
    p.add_argument("--styles-file", type=Path, metavar="CSV", help="A1111 prompt styles for the lines' styles")
    p.add_argument("--wildcards-dir", type=Path, help="wildcard files for __name__ in prompts")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--threads", type=int_arg, help="CPU threads for PyTorch here (default: all cores)")
    ray = p.add_argument_group("on a Ray cluster (pip install \"opensd[ray]\"; see docs/scale-out.md)")
    ray.add_argument("--ray", metavar="auto|ADDRESS", help="run the generations on Ray workers (as opensd serve --ray)")
    ray.add_argument("--ray-workers", type=int_arg, metavar="N", help="CPU workers (default: as the cluster holds)")
    ray.add_argument("--ray-threads", type=int_arg, metavar="T", help="threads per CPU worker (default 4)")
    ray.add_argument("--ray-ship-models", action="store_true",
                     help="send the model files to nodes without this models folder (as opensd serve --ray-ship-models)")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    import tempfile

    from tqdm import tqdm

    from ..distributed import batch
    from ..distributed.manifest import Manifest
    from ..library.user_config import models_dir
    from ..server.app import ServerState
    from ..server.settings import Settings

    set_threads(args.threads)
    prog = "opensd batch"
    with tempfile.TemporaryDirectory(prefix="opensd-batch-") as data:  # the queue's database: the manifest is the record
        settings = Settings(outputs_dir=args.output_dir, data_dir=Path(data), models_dir=models_dir(args.models_dir),
                            styles_file=args.styles_file, wildcards_dir=args.wildcards_dir, device=args.device,
                            precision=args.precision, queue_size=100_000, work_budget=1e15, ray=args.ray,
                            ray_workers=args.ray_workers, ray_threads=args.ray_threads,
                            ray_ship_models=args.ray_ship_models)
        state = ServerState(settings)
        try:
            if args.model:
                state.set_model(state.cache.resolve(args.model, "model"))
            lines, refused = batch.read_lines(state, args.jobs)
            for why in refused:  # the other lines still run
                print(f"{prog}: {why}", file=sys.stderr)
            if not lines:
                return 2
            manifest = Manifest(args.output_dir)
            todo = [line for line in lines if line.key not in manifest.done]
            for line in lines:
                if line.ignored:
                    print(f"{prog}: {args.jobs.name}:{line.number}: not A1111 request fields, ignored: "
                          f"{', '.join(line.ignored)}", file=sys.stderr)
            print(f"{prog}: {len(lines)} requests, {len(lines) - len(todo)} done before, {len(todo)} to run"
                  + (f" ({len(refused)} refused)" if refused else ""), file=sys.stderr)
            done = sum(len(manifest.done[line.key]) for line in lines if line.key in manifest.done)
            with tqdm(total=done + sum(line.images for line in todo), initial=done, unit="img", desc="batch",
                      file=sys.stderr, dynamic_ncols=True) as bar:
                state.queue.start()
                failed = batch.run(state, todo, manifest, lambda line, n: bar.update(n),
                                   window=2 * len(state.queue.workers) + 2)
        except KeyboardInterrupt:
            print(f"{prog}: stopped; run the same command again to finish the rest", file=sys.stderr)
            raise
        finally:
            state.queue.stop()
            if state.pool is not None:
                state.pool.close()
            state.store.close()
    for line, why in failed:
        print(f"{prog}: {args.jobs.name}:{line.number}: failed: {why}", file=sys.stderr)
    print(f"{prog}: {len(lines) - len(failed)} of {len(lines) + len(refused)} requests done; manifest: "
          f"{manifest.path}", file=sys.stderr)
    return 1 if failed or refused else 0
