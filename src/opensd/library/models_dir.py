"""A user's model collection on disk, laid out as AUTOMATIC1111's or ComfyUI's `models/` folder.

Names are paths relative to their kind's folder, with forward slashes ("sd15/dreamshaper.safetensors"),
as both UIs show them. Every lookup resolves inside the kind's folder: a name that escapes it
(`..`, an absolute path, a symlink pointing outside) is refused, never opened.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument

# kind -> folder names tried in order (A1111 first, then ComfyUI)
LAYOUT = {
    "checkpoints": ("Stable-diffusion", "checkpoints"),
    "loras": ("Lora", "loras", "LyCORIS"),
    "vae": ("VAE", "vae"),
    "embeddings": ("embeddings",),
    "hypernetworks": ("hypernetworks",),  # A1111's and ComfyUI's name alike
    "controlnet": ("ControlNet", "controlnet"),
    # ComfyUI's folders for model parts and LDM configs (its loaders' "unet", "clip", "configs")
    "unet": ("unet", "diffusion_models"),
    "unet_gguf": ("unet", "diffusion_models"),  # city96's ComfyUI-GGUF lists the .gguf files there apart
    "clip": ("clip", "text_encoders"),
    "configs": ("configs",),
    "clip_vision": ("clip_vision",),      # image encoders (CLIPVisionLoader)
    "style_models": ("style_models",),    # Flux Redux (StyleModelLoader)
    "ipadapter": ("ipadapter",),          # IP-Adapters (ComfyUI; A1111's ControlNet extension uses ControlNet/)
    "inpaint": ("inpaint",),              # Fooocus inpaint head + patch, LaMa/MAT (comfyui-inpaint-nodes)
    "gligen": ("gligen",),                # GLIGEN box-grounding models (GLIGENLoader)
    "model_patches": ("model_patches",),  # ModelPatchLoader's files (Z-Image Fun ControlNets)
    # upscaler models (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, ...): A1111 keeps one folder per family
    "upscale_models": ("ESRGAN", "upscale_models", "RealESRGAN", "SwinIR", "DAT", "HAT"),
    # tiny autoencoders (TAESD family) for live previews and fast decodes
    "vae_approx": ("VAE-approx", "vae_approx"),
    # ControlNet preprocessor models (Depth Anything V2): Forge's folder, then ComfyUI-style ones
    "preprocessors": ("ControlNetPreprocessor", "controlnet_aux", "depthanything"),
    # InsightFace's model packs (IP-Adapter FaceID): insightface/models/buffalo_l/*.onnx, as FaceAnalysis finds them
    "insightface": ("insightface",),
    # WD14 image taggers (<name>.onnx + <name>.csv), ComfyUI-WD14-Tagger's registered folder name
    "wd14_tagger": ("wd14_tagger",),
    # DeepDanbooru's PyTorch port (model-resnet_custom_v3.pt), where A1111 keeps it
    "deepbooru": ("torch_deepdanbooru",),
}
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# kinds whose files are not those above (Fooocus names its inpaint patch inpaint_v26.fooocus.patch;
# DWPose's preprocessor models are ONNX files)
SUFFIXES = {"configs": (".yaml",), "unet_gguf": (".gguf",), "inpaint": WEIGHT_SUFFIXES + (".patch",),
            "preprocessors": WEIGHT_SUFFIXES + (".onnx",), "insightface": (".onnx",),
            "wd14_tagger": (".onnx",), "deepbooru": (".pt", ".pth")}
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "builtin"
BUILTIN_CHECKPOINT = BUILTIN_DIR / "opensd-emoji.safetensors"
BUILTIN_FOLDERS = {"controlnet": BUILTIN_DIR / "controlnet"}  # the built-in model's Canny ControlNet


class AmbiguousName(InvalidArgument):
    """A model name that fits several files (the message lists them)."""


@dataclass(frozen=True)
class ModelFile:
    kind: str
    name: str          # relative name, forward slashes
    path: Path


class ModelFolders:
    """`root` is the models folder (may be None: only the built-in model is available).
    `extra` maps kind -> additional folders (e.g. the built-in ControlNet beside the built-in model).
    `save_root` is where new models (merges, conversions, trained LoRAs) are written, laid out like
    `root` and listed with it; default `root` (a server without --models-dir saves under its data folder)."""

    def __init__(self, root: Path | None, include_builtin: bool = True,
                 extra: dict[str, list[Path]] | None = None, save_root: Path | None = None):
        self.root = Path(root).resolve() if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise InvalidArgument(f"models-dir: {root} is not a folder")
        self.save_root = Path(save_root).resolve() if save_root is not None else self.root
        self.include_builtin = include_builtin
        self.extra = {k: [Path(p).resolve() for p in v] for k, v in (extra or {}).items()}

    def folders(self, kind: str) -> list[Path]:
        if kind not in LAYOUT:
            raise InvalidArgument(f"model kind {kind!r} is not one of {', '.join(LAYOUT)}")
        found = []
        for root in dict.fromkeys(r for r in (self.root, self.save_root) if r is not None):
            found += [(root / d).resolve() for d in LAYOUT[kind] if (root / d).is_dir()]
            beside = root.parent / "embeddings"  # A1111 keeps them beside models/, in the webui folder
            if kind == "embeddings" and (root / "Stable-diffusion").is_dir() and beside.is_dir():
                found.append(beside.resolve())
        builtin = [BUILTIN_FOLDERS[kind]] if self.include_builtin and kind in BUILTIN_FOLDERS else []
        return found + [p for p in self.extra.get(kind, []) + builtin if p.is_dir()]

    def save_folder(self, kind: str) -> Path:
        """The folder new files of `kind` are written to: its first existing folder under save_root,
        else one made now, named as the folder's layout names it (ComfyUI's when its checkpoints
        folder is there, else A1111's)."""
        if self.save_root is None:
            raise InvalidArgument("models-dir: no models folder to save into (start the server with --models-dir)")
        self.folders(kind)  # checks the kind
        for name in LAYOUT[kind]:
            if (self.save_root / name).is_dir():
                return (self.save_root / name).resolve()
        comfy = (self.save_root / "checkpoints").is_dir() and not (self.save_root / "Stable-diffusion").is_dir()
        folder = self.save_root / LAYOUT[kind][1 if comfy and len(LAYOUT[kind]) > 1 else 0]
        folder.mkdir(parents=True, exist_ok=True)
        return folder.resolve()

    def list(self, kind: str) -> list[ModelFile]:
        """Every weight file (and, for checkpoints, diffusers folder) of this kind, sorted by name."""
        seen: dict[str, ModelFile] = {}
        if kind == "checkpoints" and self.include_builtin and BUILTIN_CHECKPOINT.is_file():
            seen[BUILTIN_CHECKPOINT.name] = ModelFile(kind, BUILTIN_CHECKPOINT.name, BUILTIN_CHECKPOINT)
        for folder in self.folders(kind):
            for path in sorted(folder.rglob("*")):
                if not _inside(path, folder):
                    continue
                is_diffusers = kind == "checkpoints" and path.is_dir() and (path / "model_index.json").is_file()
                if is_diffusers or (path.is_file() and path.suffix.lower() in SUFFIXES.get(kind, WEIGHT_SUFFIXES)):
                    name = path.relative_to(folder).as_posix()
                    seen.setdefault(name, ModelFile(kind, name, path))
        return sorted(seen.values(), key=lambda m: m.name.lower())

    def resolve(self, kind: str, name: str, files: list[ModelFile] | None = None) -> Path:
        """The file for `name`, as A1111 and ComfyUI users write it: an exact relative name, a name
        without extension / folder (A1111 prompt tags say `<lora:foo:1>` for `Lora/sub/foo.safetensors`),
        an A1111 title "name [hash]", a short or full SHA-256 (or A1111's legacy 8-digit hash) of a
        file already hashed (see by_hash), a LoRA's alias (the name its trainer gave it), else the
        one model whose name contains it. A name that fits several models is refused, listing them.
        `files`: the models to pick from, when not the kind's folders (network_models.whole_models)."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(f"{kind}: a model name is required")
        if "\x00" in name or Path(name).is_absolute() or ".." in Path(name.replace("\\", "/")).parts:
            raise InvalidArgument(f"{kind}: {name!r} is not a name inside the {kind} folder")
        name = name.replace("\\", "/").strip()
        files = self.list(kind) if files is None else files
        title = _TITLE.match(name)
        if title and not _pick(kind, name, _by_name(files, name)):
            name, wanted = title.group(1), title.group(2)  # "name [hash]": the name, else the hash
            hit = _pick(kind, name, _by_name(files, name)) or _pick(kind, wanted, by_hash(files, wanted))
            if hit:
                return hit
        for hits in (lambda: _by_name(files, name), lambda: by_hash(files, name) if _HEX.match(name) else [],
                     lambda: _by_alias(files, name) if kind == "loras" else [],
                     lambda: [m for m in files if name.lower() in _stem(m.name).lower()]):  # "canny" -> control_..._canny
            hit = _pick(kind, name, hits())
            if hit:
                return hit
        known = ", ".join(m.name for m in files[:10]) or "none"
        raise InvalidArgument(f"{kind}: no model named {name!r} (available: {known})")


_TITLE = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")
_HEX = re.compile(r"^[0-9a-fA-F]{8,64}$")


def _by_name(files: list[ModelFile], name: str) -> list[ModelFile]:
    """The files `name` spells, at the first level that fits any: exact, in any case, then without
    extension or folder ("dream" is "sd15/dream.safetensors"), then that in any case."""
    def short(m: ModelFile) -> set[str]:
        return {_stem(m.name), Path(m.name).name, _stem(Path(m.name).name)}

    for match in (
        lambda m: m.name == name,
        lambda m: m.name.lower() == name.lower(),
        lambda m: name in short(m),
        lambda m: _stem(name) in short(m),
        lambda m: _stem(name).lower() in {s.lower() for s in short(m)},
    ):
        hits = [m for m in files if match(m)]
        if hits:
            return hits
    return []


def by_hash(files: list[ModelFile], wanted: str) -> list[ModelFile]:
    """The files whose known SHA-256 starts with `wanted`, or whose legacy A1111 hash (8 digits,
    cheap: 64 KiB read) is it. SHA-256s are only looked up in the hash cache, never computed here:
    hashing a folder of checkpoints takes minutes (`opensd models list --hash` fills the cache)."""
    from .hashes import default_cache, legacy_model_hash

    wanted, cache, out = wanted.lower(), default_cache(), []
    for m in files:
        if not m.path.is_file():
            continue
        try:
            known = [cache.cached(m.path) or "", cache.cached(m.path, "addnet") or ""]
            if len(wanted) == 8:
                known.append(legacy_model_hash(m.path))
        except OSError:
            continue
        if any(k and k.startswith(wanted) for k in known):
            out.append(m)
    return out


def _by_alias(files: list[ModelFile], name: str) -> list[ModelFile]:
    """LoRAs whose trainer named them `name` (kohya's ss_output_name), as A1111 finds them by alias."""
    from .hashes import safetensors_metadata

    out = []
    for m in files:
        try:
            if m.path.suffix.lower() == ".safetensors" and safetensors_metadata(m.path).get("ss_output_name") == name:
                out.append(m)
        except (OSError, ValueError):
            continue
    return out


def _pick(kind: str, name: str, hits: list[ModelFile]) -> Path | None:
    if len(hits) > 1:
        names = ", ".join(m.name for m in hits[:8])
        raise AmbiguousName(f"{kind}: {name!r} matches several models ({names}); give the full name")
    return hits[0].path if hits else None


def _stem(name: str) -> str:
    for suffix in WEIGHT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _inside(path: Path, folder: Path) -> bool:
    """True if `path` (after following symlinks) stays inside `folder`."""
    try:
        path.resolve().relative_to(folder)
        return True
    except (ValueError, OSError):
        return False
