"""`opensd serve`: the HTTP server (A1111 API + ComfyUI API over one job queue)."""
from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import webbrowser
from pathlib import Path

from ..errors import InvalidArgument
from ..pipeline.memory_modes import A1111_FLAGS, MODES
from .common import float_arg, int_arg, set_threads


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the web UI and the AUTOMATIC1111 and ComfyUI HTTP APIs")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_arg, default=7860)
    p.add_argument("--models-dir", type=Path, help="an A1111 or ComfyUI models/ folder (default: $OPENSD_MODELS_DIR, "
                                                   "else models_dir in the config file)")
    p.add_argument("--outputs-dir", type=Path, default=Path("outputs"), help="images and the job database")
    p.add_argument("--styles-file", type=Path, metavar="CSV",
                   help="A1111 prompt styles (styles.csv); default: styles.csv in the outputs folder")
    p.add_argument("--wildcards-dir", type=Path, metavar="DIR",
                   help="__name__ wildcard files (name.txt); default: wildcards/ in the outputs folder")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--api-token", default=os.environ.get("OPENSD_API_TOKEN") or None,
                     help="require this token: 'Authorization: Bearer T', or Basic with user:password given "
                          "as T (like A1111's --api-auth); default $OPENSD_API_TOKEN (keeps it out of `ps`)")
    tok.add_argument("--insecure-no-token", action="store_true",
                     help="allow binding a non-loopback address with no token (prints a warning)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="an extra browser Origin allowed to call the API (e.g. http://myhost:3000)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="an extra Host header name to answer (DNS-rebinding defence allows loopback only)")
    p.add_argument("--queue-size", type=int_arg, default=64, help="most jobs waiting; more answer 429")
    p.add_argument("--max-waiting", type=int_arg, default=32, metavar="N",
                   help="A1111 requests that wait (each holding its body) for a place when the queue is full, "
                        "as A1111 makes them wait; more answer 429 (default 32)")
    p.add_argument("--work-budget", type=float_arg, default=10_000.0, metavar="MPSTEPS",
                   help="most work one request may ask for, in megapixel-steps (pixels x steps x images, "
                        "every pass); default 10000, e.g. 8 x 4 images of 1024x1024 at 50 steps is 1678")
    p.add_argument("--model-cache-gb", type=float_arg, default=8.0, help="parameters kept loaded, in GB")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto (default): CUDA, else MPS, else the CPU")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto (default): fp16 on CUDA, bf16 on CPUs with native bf16 for SD-size models, else fp32")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--memory", choices=MODES, default="auto",
                     help="GPU memory mode of every loaded model: medvram moves text encoders, UNet and VAE to the "
                          "GPU in turns, lowvram also the UNet block by block, medvram-sdxl medvram for SDXL models only; "
                          "auto (default) chooses from free VRAM")
    for mode in A1111_FLAGS:
        mem.add_argument(f"--{mode}", dest="memory", action="store_const", const=mode, help=f"--memory {mode}")
    p.add_argument("--backend", choices=["torch", "openvino"], default="torch",
                   help="openvino: UNet models run through OpenVINO on the CPU (pip install \"opensd[openvino]\"; "
                        "converted once per model and LoRA set, cached under ~/.cache/opensd/openvino)")
    p.add_argument("--max-body-mb", type=float_arg, default=64.0)
    p.add_argument("--max-upload-gb", type=float_arg, default=2.0,
                   help="largest model file a client may upload (Krita's LoRA upload), in GiB")
    p.add_argument("--threads", type=int_arg, help="CPU threads for PyTorch (default: all cores)")
    ray = p.add_argument_group("scale-out on Ray (pip install \"opensd[ray]\"; see docs/scale-out.md)")
    ray.add_argument("--ray", metavar="auto|ADDRESS",
                     help="run generations on Ray actors: one per GPU of the cluster, else CPU workers; 'auto' "
                          "joins the cluster on this machine (or starts one), ADDRESS joins that one (head:6379)")
    ray.add_argument("--ray-workers", type=int_arg, metavar="N",
                     help="CPU workers to start (default: as many as the cluster's CPUs hold, growing as nodes join)")
    ray.add_argument("--ray-threads", type=int_arg, metavar="T", help="threads (Ray CPUs) per CPU worker (default 4)")
    ray.add_argument("--ray-ship-models", action="store_true",
                     help="nodes without this models folder get each model file a job needs from here, once per "
                          "node, by its SHA-256 (kept in OPENSD_CACHE_DIR/shipped-models on each node)")
    p.add_argument("--open", action="store_true", help="open the web UI in the default browser")
    p.set_defaults(func=cmd_serve)


def settings_from(args: argparse.Namespace):
    from ..library.user_config import models_dir
    from ..server.settings import Settings

    for flag, value in (("model-cache-gb", args.model_cache_gb), ("max-body-mb", args.max_body_mb),
                        ("max-upload-gb", args.max_upload_gb)):
        if not 0 < value < math.inf:
            raise InvalidArgument(f"{flag}: {value} must be a positive number")
    return Settings(host=args.host, port=args.port, models_dir=models_dir(args.models_dir), outputs_dir=args.outputs_dir,
                    api_token=args.api_token, insecure_no_token=args.insecure_no_token,
                    allow_origins=tuple(args.allow_origin), allow_hosts=tuple(args.allow_host),
                    styles_file=args.styles_file, wildcards_dir=args.wildcards_dir,
                    queue_size=args.queue_size, max_waiting=args.max_waiting, work_budget=args.work_budget,
                    device=args.device, precision=args.precision, memory=args.memory, backend=args.backend,
                    model_budget_bytes=int(args.model_cache_gb * (1 << 30)),
                    max_body_bytes=int(args.max_body_mb * (1 << 20)),
                    max_upload_bytes=int(args.max_upload_gb * (1 << 30)),
                    ray=args.ray, ray_workers=args.ray_workers, ray_threads=args.ray_threads,
                    ray_ship_models=args.ray_ship_models)


SHUTDOWN_GRACE_S = 3


def ui_url(host: str, port: int) -> str:
    """The address a browser on this machine uses for the server bound to host:port."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)  # wildcards
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..pipeline.device import resolve_device
    from ..pipeline.precision import summary
    from ..server.app import create_app
    from ..server.listen import listen

    settings = settings_from(args)
    set_threads(args.threads)
    if settings.backend == "openvino":  # not installed, or not a CPU: one line now, not at the first job
        from ..pipeline.openvino_unet import check_openvino
        check_openvino(resolve_device(settings.device))
    warning = settings.check_exposure()  # raises InvalidArgument for an unprotected public bind
    sock = listen(args.host, args.port)  # first: a port in use is reported before anything is set up
    if warning:
        print(f"opensd: {warning}", file=sys.stderr)
    app = create_app(settings)
    print(f"opensd: serving on http://{args.host}:{args.port} (web UI at /, API docs at /docs)", file=sys.stderr)
    memory = "" if settings.memory == "auto" else f"; memory: {settings.memory}"
    print(f"opensd: {summary(settings.precision, resolve_device(settings.device))}{memory}", file=sys.stderr)
    if args.open:  # the socket already listens, so the browser's request waits for the server
        threading.Thread(target=webbrowser.open, args=(ui_url(args.host, args.port),), daemon=True).start()
    # Ctrl-C: a request still waiting on a job (an A1111 txt2img) would keep uvicorn waiting until the job
    # ends; after SHUTDOWN_GRACE_S it is dropped, and the app's shutdown interrupts the job (kept queued).
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
