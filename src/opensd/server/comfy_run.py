"""Running one ComfyUI job: the graph through opensd.workflows, its events as ComfyUI's websocket
messages, and the result /history keeps. It runs wherever the job runs (the front door's own worker
or a Ray worker, opensd.distributed): `send(message)` takes each message (a JSON dict, or bytes for
a binary preview frame) for the client that queued the job."""
from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidArgument
from ..pipeline.pipeline import Interrupted
from ..workflows import ExecutionContext, GraphError, NodeError, OutputCache, execute
from . import images_io

PREVIEW_IMAGE, JPEG, PNG = 1, 1, 2
RECORDED = ("execution_start", "execution_cached", "execution_success", "execution_error", "execution_interrupted")


def now_ms() -> int:
    return int(time.time() * 1000)


def context(folders, cache, dirs: dict[str, Path], outputs: OutputCache, should_stop=lambda: False,
            extra_pnginfo=None) -> ExecutionContext:
    """A run's context: models by name from `folders` through the model cache `cache`, images in
    `dirs` ("input", "output", "temp"), node outputs kept in `outputs` across runs."""
    return ExecutionContext(
        folders=folders, load_pipeline=lambda name: cache.get(cache.resolve(name)),
        outputs_dir=dirs["output"], inputs_dir=dirs["input"], should_stop=should_stop,
        cache=outputs, temp_dir=dirs["temp"], extra_pnginfo=extra_pnginfo,
        device=cache.device, precision=cache.precision)  # part loaders follow the server's choice


def run_graph(job_id: str, payload: dict, ctx: ExecutionContext, ctl, send: Callable[[object], None]) -> dict:
    """Run the job's graph with `ctx`, reporting through `ctl` (jobs.Control) and `send`; -> the result
    stored for /history: {"outputs": {node: ui}, "status": {...}}."""
    messages: list = []

    def emit(kind: str, data: dict) -> None:
        data = dict(data, prompt_id=job_id)
        if kind in RECORDED:
            messages.append([kind, dict(data)])
        send({"type": kind, "data": data})

    def on_event(kind: str, data) -> None:
        if kind == "preview":
            ctl.preview(data)
            send(struct.pack(">II", PREVIEW_IMAGE, JPEG) + images_io.jpeg_bytes(data))
            return
        if kind == "image_png":  # SaveImageWebsocket: the whole image, in a PNG preview frame
            send(struct.pack(">II", PREVIEW_IMAGE, PNG) + images_io.png_bytes(data))
            return
        if kind == "image_jpeg":  # ETN_SendImageWebSocket's JPEG format
            send(struct.pack(">II", PREVIEW_IMAGE, JPEG) + images_io.jpeg_bytes(data, quality=95))
            return
        data = dict(data)
        if kind == "progress":
            ctl.progress.step, ctl.progress.steps = data.get("value", 0), data.get("max", 0)
        if kind in ("executing", "executed"):
            data.setdefault("display_node", data.get("node"))
        if kind == "execution_cached":
            data["timestamp"] = now_ms()
        emit(kind, data)

    emit("execution_start", {"timestamp": now_ms()})
    outputs, status = {}, "success"
    try:
        outputs = execute(payload["prompt"], ctx, on_event)
        emit("execution_success", {"timestamp": now_ms()})
    except Interrupted as e:
        status = "error"
        node = getattr(e, "node_id", None)
        emit("execution_interrupted", {"node_id": node, "node_type": _class(payload, node), "executed": [],
                                       "timestamp": now_ms()})
    except (NodeError, GraphError, InvalidArgument) as e:
        status = "error"
        emit("execution_error", {
            "node_id": getattr(e, "node_id", None), "node_type": getattr(e, "node_type", None),
            "executed": getattr(e, "executed", []), "exception_message": getattr(e, "exception_message", str(e)),
            "exception_type": getattr(e, "exception_type", type(e).__name__),
            "traceback": getattr(e, "traceback", []), "current_inputs": {}, "current_outputs": {},
            "timestamp": now_ms()})
    # The closing "executing" (node None) is not sent here: clients read /history as soon as it comes,
    # so the front door sends it once the job's result is stored (comfy_api.ComfyHub.finished).
    return {"outputs": outputs, "status": {"status_str": status, "completed": status == "success",
                                           "messages": messages}}


def _class(payload, node_id):
    node = (payload.get("prompt") or {}).get(node_id) if node_id else None
    return node.get("class_type") if isinstance(node, dict) else None
