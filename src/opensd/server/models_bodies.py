"""Request and response bodies of the model routes (/opensd/v1/models...), so /docs describes them."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["checkpoints", "vae", "loras", "embeddings", "controlnet"]
NAME = 1000  # longest model name accepted (a relative name inside its folder)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelItem(BaseModel):
    name: str = Field(description="name inside its kind's folder, forward slashes; what the other routes take")
    size: int = Field(description="bytes (a diffusers folder: all its files)")
    family: str | None = Field(None, description="sd1, sd2, sdxl, sdxl_refiner or small; null when the file "
                                                 "does not say")
    detail: str = Field("", description="what else the header says, e.g. '512 px, eps' or 'rank 8, 64 modules'")
    hash: str | None = Field(None, description="AUTOMATIC1111's short hash when already computed "
                                               "(POST /opensd/v1/models/hash computes it)")
    takes_mask: bool = Field(False, description="a ControlNet that inpaints from a mask (Z-Image Fun 2.x, Qwen-Image "
                                                "blockwise Inpaint): an A1111 unit's mask, else an inpainting "
                                                "request's, reaches it")


class ModelList(BaseModel):
    checkpoints: list[ModelItem]
    vae: list[ModelItem]
    loras: list[ModelItem]
    embeddings: list[ModelItem]
    controlnet: list[ModelItem]
    models_dir: str | None = Field(None, description="the models folder read (--models-dir); null when none is "
                                                     "set: only the built-in models and those made here are listed")


class ModelDetail(ModelItem):
    kind: Kind
    metadata: dict[str, str] = Field(description="the safetensors header's __metadata__ (e.g. kohya's ss_* "
                                                 "training tags, modelspec.*)")


class HashRequest(_Strict):
    kind: Kind
    name: str = Field(..., max_length=NAME)


class HashResult(BaseModel):
    kind: Kind
    name: str
    hash: str = Field(description="10 hex digits of the SHA-256 (checkpoints, VAEs, ControlNets); 12 of the "
                                  "addnet hash (LoRAs) or of the SHA-256 (embeddings)")


class MergeRequest(_Strict):
    # min_length: an empty name was taken for "no model" and the merge job failed with an IndexError
    a: str = Field(..., min_length=1, max_length=NAME, description="checkpoint A (a name from the checkpoints list)")
    b: str = Field(..., min_length=1, max_length=NAME)
    c: str | None = Field(None, min_length=1, max_length=NAME, description="checkpoint C, for add_difference only")
    mode: Literal["weighted_sum", "add_difference"] = "weighted_sum"
    multiplier: float = Field(0.5, ge=-10, le=10, allow_inf_nan=False,
                              description="weighted_sum: A*(1-m)+B*m; add_difference: A+(B-C)*m")
    fp16: bool = False
    output: str = Field(..., max_length=200, description="file name in the checkpoints folder (.safetensors)")
    overwrite: bool = False


class ConvertRequest(_Strict):
    source: str = Field(..., max_length=NAME, description="a name from the checkpoints list")
    to: Literal["safetensors", "diffusers"] = "safetensors"
    fp16: bool = False
    ema_only: bool = Field(False, description="use the EMA weights (model_ema.*) as the model")
    output: str = Field(..., max_length=200, description="file (.safetensors) or folder name (diffusers) in "
                                                         "the checkpoints folder")
    overwrite: bool = False
