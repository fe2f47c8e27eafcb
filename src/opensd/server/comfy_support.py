"""The smaller ComfyUI routes its frontend calls at start and in its side panels: /extensions,
/free, /i18n, /features, /models, /experiment/models, /view_metadata, /workflow_templates and
/global_subgraphs. Each answers from our own state; none loads code or contacts anything."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..errors import InvalidArgument
from ..library.hashes import safetensors_metadata

# ComfyUI's model folder names; ours are spelled the same (library.models_dir.LAYOUT)
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "embeddings", "controlnet", "upscale_models", "unet", "clip",
                 "configs", "clip_vision", "style_models", "ipadapter", "inpaint", "gligen",
                 "hypernetworks")


def _not_found(detail: str) -> JSONResponse:
    return JSONResponse({"error": "NotFound", "detail": detail}, status_code=404)


def router(state) -> APIRouter:
    api = APIRouter(tags=["ComfyUI"])
    folders = state.folders

    @api.get("/extensions")
    def extensions():
        # Third-party frontend extensions are never loaded: nothing on disk becomes page code.
        return []

    @api.post("/free")
    def free(body: dict):
        # ComfyUI's "Unload models" / "Free model and node cache": both drop every loaded model here.
        if body.get("unload_models") is True or body.get("free_memory") is True:
            state.cache.clear()
            if state.pool is not None:  # and on every Ray worker
                state.pool.unload()
        return {}

    @api.get("/i18n")
    def i18n():
        return {}  # translations contributed by custom nodes; there are none

    @api.get("/features")
    def features():
        # No preview metadata frames: previews stay ComfyUI's plain type-1 JPEG frames.
        return {"supports_preview_metadata": False, "max_upload_size": state.settings.max_body_bytes}

    @api.get("/workflow_templates")
    def workflow_templates():
        return {}  # templates shipped by custom node packages: none

    @api.get("/global_subgraphs")
    def global_subgraphs():
        return {}  # subgraph blueprints shipped by custom node packages: none

    @api.get("/models")
    def model_folders():
        return list(MODEL_FOLDERS)

    @api.get("/experiment/models")
    def experiment_models():
        return [{"name": f, "folders": [str(p) for p in folders.folders(f)]} for f in MODEL_FOLDERS]

    @api.get("/experiment/models/{folder}")
    def experiment_models_in(folder: str):
        if folder not in MODEL_FOLDERS:
            return _not_found(f"folder: {folder!r} is not one of {', '.join(MODEL_FOLDERS)}")
        roots = folders.folders(folder)
        out = []
        for m in folders.list(folder):
            index = next((i for i, r in enumerate(roots) if r in m.path.parents), 0)
            out.append({"name": m.name, "pathIndex": index})
        return out

    @api.get("/view_metadata/{folder}")
    def view_metadata(folder: str, filename: str):
        if folder not in MODEL_FOLDERS:
            return _not_found(f"folder: {folder!r} is not one of {', '.join(MODEL_FOLDERS)}")
        try:
            path = folders.resolve(folder, filename)
        except InvalidArgument as e:
            return _not_found(str(e))
        if path.suffix.lower() != ".safetensors":
            return _not_found(f"filename: {filename!r} is not a safetensors file")
        try:
            return safetensors_metadata(path)
        except (OSError, ValueError) as e:
            return _not_found(f"filename: {e}")

    return api
