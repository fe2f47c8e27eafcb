"""`opensd models list | info | add | verify | remove`: the models folder as a collection.

Only `models add` with an address touches the network, and only for that file (and, for a Civitai
link, Civitai's description of it); everything else works offline on the folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InvalidArgument
from .common import int_arg
from .model_flags import add_models_dir_flag
from .models import add_lora_extract

KIND_HELP = "checkpoints, loras, vae, embeddings, controlnet, upscale_models, unet or clip"


def register(sub) -> None:
    models = sub.add_parser("models", help="list, inspect, add, verify and remove the models in the models folder",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = models.add_subparsers(dest="models_command", required=True)

    ls = cmds.add_parser("list", help="every model by kind, with family, size and known hashes (offline)")
    ls.add_argument("--kind", help=KIND_HELP)
    ls.add_argument("--hash", action="store_true", help="compute the SHA-256 of files not hashed yet (cached)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_list)

    info = cmds.add_parser("info", help="a model's kind, family, hashes, source and training metadata")
    info.add_argument("name", help="the model's name (with or without extension or folder), or a short hash")
    info.add_argument("--kind", help=KIND_HELP)
    info.set_defaults(func=cmd_info)

    add = cmds.add_parser("add", help="copy a file, or download one, into the right subfolder",
                          description="SOURCE: a local file; an http(s) address; a Hugging Face file "
                                      "(owner/repo/file.safetensors); a Civitai model or version link "
                                      "(https://civitai.com/models/ID?modelVersionId=V, /api/download/models/V). "
                                      "Tokens: $HF_TOKEN, $CIVITAI_TOKEN.")
    add.add_argument("source")
    add.add_argument("--kind", help=f"{KIND_HELP} (default: detected from the file)")
    add.add_argument("--name", help="file name in the models folder (default: the source's)")
    add.add_argument("--sha256", help="expected SHA-256, or its 10-digit AutoV2 form; a mismatch keeps nothing")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--move", action="store_true", help="move a local file instead of copying it")
    how.add_argument("--link", action="store_true", help="hard-link a local file (same file system) instead of copying")
    add.add_argument("--revision", default="main", help="Hugging Face branch, tag or commit (default main)")
    add.add_argument("--hf-endpoint", default="https://huggingface.co", help="Hugging Face (or a mirror) address")
    add.add_argument("--civitai-endpoint", default="https://civitai.com", help="Civitai (or a mirror) address")
    add.add_argument("--retries", type=int_arg, default=3, help="resume an interrupted download this often (default 3)")
    add.add_argument("--no-progress", action="store_true")
    add.set_defaults(func=cmd_add)

    ver = cmds.add_parser("verify", help="re-hash files and compare with the SHA-256 recorded when they were added")
    ver.add_argument("names", nargs="*", help="models to check (default: every recorded one)")
    ver.add_argument("--record-new", action="store_true", help="record the files that have no record yet, as they are")
    ver.set_defaults(func=cmd_verify)

    add_lora_extract(cmds)

    rm = cmds.add_parser("remove", help="delete a model file and its record (asks first)")
    rm.add_argument("name")
    rm.add_argument("--kind", help=KIND_HELP)
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask")
    rm.set_defaults(func=cmd_remove)
    for p in (ls, info, add, ver, rm):
        add_models_dir_flag(p)


def _root(args: argparse.Namespace) -> Path:
    from ..library.user_config import MODELS_DIR_ENV, config_path, models_dir

    root = models_dir(args.models_dir)
    if root is None:
        raise InvalidArgument(f"models-dir: no models folder is set (--models-dir, ${MODELS_DIR_ENV} or "
                              f"models_dir in {config_path()})")
    return root.resolve()


def _kinds(kind: str | None) -> tuple[str, ...]:
    from ..library.model_manager import KINDS

    if kind is not None and kind not in KINDS:
        raise InvalidArgument(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    return (kind,) if kind else KINDS


def cmd_list(args: argparse.Namespace) -> int:
    from ..library.hashes import default_cache
    from ..library.model_catalog import describe
    from ..library.models_dir import ModelFolders

    root = _root(args)
    folders = ModelFolders(root, include_builtin=False)
    rows = []
    for kind in _kinds(args.kind):
        for m in folders.list(kind):
            entry = describe(m)
            sha = default_cache().sha256(m.path) if args.hash and m.path.is_file() else None
            rows.append({"kind": kind, "name": m.name, "path": str(m.path), "size": entry.size,
                         "family": entry.family, "detail": entry.detail, "sha256": sha or _cached(m.path)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for kind in dict.fromkeys(r["kind"] for r in rows):
        print(f"{kind}:")
        for r in (r for r in rows if r["kind"] == kind):
            short = (r["sha256"] or "")[:10] or "-" * 10
            print(f"  {r['name']}  {r['size'] / 1e6:.1f} MB  {r['family'] or '?'}  {short}  {r['detail']}".rstrip())
    if not rows:
        print(f"no models in {root}", file=sys.stderr)
    return 0


def _cached(path: Path) -> str | None:
    from ..library.hashes import default_cache

    try:
        return default_cache().cached(path) if path.is_file() else None
    except OSError:
        return None


def cmd_info(args: argparse.Namespace) -> int:
    from ..library.model_manager import find
    from ..library.model_records import Records
    from ..library.model_report import report

    root = _root(args)
    m = find(root, args.name, _kinds(args.kind)[0] if args.kind else None)
    if m.path.is_dir():
        print(f"file: {m.path}\nkind: diffusers folder ({m.kind})")
        return 0
    print("\n".join(report(m.path, m.kind, m.name, Records(root).get(m.path))))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from ..library.model_manager import add
    from ..library.model_kind import LABELS

    root = _root(args)
    if args.kind is not None:
        _kinds(args.kind)
    if args.retries < 0:
        raise InvalidArgument(f"retries: {args.retries} must be 0 or more")
    mode = "move" if args.move else "link" if args.link else "copy"
    done = add(root, args.source, kind=args.kind, name=args.name, sha256=args.sha256, mode=mode,
               hf_endpoint=args.hf_endpoint, civitai_endpoint=args.civitai_endpoint, revision=args.revision,
               progress=not args.no_progress, retries=args.retries)
    what = "already there, recorded" if done.already else "added"
    print(f"opensd: {what}: {LABELS[done.kind]} {done.path.relative_to(root)} (sha256 {done.sha256})",
          file=sys.stderr)
    if done.path.suffix.lower() != ".safetensors" and done.kind != "hypernetworks":  # A1111 reads only .pt ones
        print(f"opensd: note: {done.path.name} is a pickle (read safely here); `opensd convert` makes a "
              ".safetensors copy that every tool can load without unpickling", file=sys.stderr)
    print(done.path)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..library.model_manager import verify

    checks = verify(_root(args), args.names, args.record_new)
    for c in checks:
        print(f"{c.status:10}  {c.name}" + (f"  ({c.detail})" if c.detail else ""))
    bad = [c for c in checks if c.status in ("changed", "missing")]
    if bad:
        print(f"opensd: {len(bad)} of {len(checks)} file(s) differ from their records", file=sys.stderr)
    return 1 if bad else 0


def cmd_remove(args: argparse.Namespace) -> int:
    from ..library.model_manager import find, remove

    root = _root(args)
    m = find(root, args.name, _kinds(args.kind)[0] if args.kind else None)
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidArgument(f"yes: removing {m.path} needs a confirmation; pass --yes to delete without asking")
        if input(f"delete {m.path}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("opensd: nothing removed", file=sys.stderr)
            return 1
    remove(root, m)
    print(f"opensd: removed {m.path}", file=sys.stderr)
    return 0
