"""`opensd workers [add N]`: the workers of a running `opensd serve` (GET/POST /opensd/v1/workers)."""
from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request

from ..errors import InvalidArgument
from .common import int_arg

COLUMNS = ("name", "kind", "node", "device", "alive", "current_job", "jobs_done", "images_per_minute", "loaded")


def register(sub) -> None:
    p = sub.add_parser("workers", help="list (or add) the workers of a running opensd serve")
    p.add_argument("action", nargs="?", choices=["list", "add"], default="list")
    p.add_argument("count", nargs="?", type=int_arg, default=1, help="add: how many Ray workers (default 1)")
    p.add_argument("--url", default="http://127.0.0.1:7860", help="the server (default http://127.0.0.1:7860)")
    p.add_argument("--api-token", default=os.environ.get("OPENSD_API_TOKEN") or None,
                   help="the server's token (default $OPENSD_API_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    p.set_defaults(func=cmd_workers)


def cmd_workers(args: argparse.Namespace) -> int:
    if args.action == "add":
        answer = _call(args, "POST", {"count": args.count})
        print(json.dumps(answer) if args.json else f"started {', '.join(answer['added'])}")
        return 0
    answer = _call(args, "GET")
    if args.json:
        print(json.dumps(answer, indent=1))
        return 0
    rows = [[_cell(w.get(c)) for c in COLUMNS] for w in answer["workers"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    for row in [list(COLUMNS), *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"{answer['pending']} jobs waiting" + (f"; Ray: {answer['ray']}" if answer.get("ray") else ""))
    return 0


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):  # loaded models
        return ",".join(v["model"] + (f"+{len(v['loras'])} LoRA" if v.get("loras") else "") for v in value) or "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _call(args: argparse.Namespace, method: str, body: dict | None = None) -> dict:
    url = args.url.rstrip("/") + "/opensd/v1/workers"
    headers = {"Content-Type": "application/json"}
    if args.api_token:
        headers["Authorization"] = f"Bearer {args.api_token}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("detail", detail)
        except ValueError:
            pass
        raise InvalidArgument(f"url: {url} answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InvalidArgument(f"url: cannot reach an opensd server at {args.url} ({getattr(e, 'reason', e)})") from None
