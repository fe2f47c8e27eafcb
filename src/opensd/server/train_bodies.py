"""Request and response bodies of the dataset and training routes (/opensd/v1/datasets...,
/opensd/v1/train...), so /docs describes them. The training fields are `opensd train`'s flags."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..pipeline import limits as L
from ..text.embeddings import MAX_VECTORS
from .a1111_models import MAX_PROMPT
from .datasets import MAX_CAPTION

TrainType = Literal["lora", "dreambooth", "embedding"]
DEFAULT_LR = {"lora": 1e-4, "dreambooth": 2e-6, "embedding": 5e-3}  # opensd train's defaults


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetCreate(_Strict):
    name: str = Field(..., max_length=200)


class DatasetSummary(BaseModel):
    name: str
    images: int


class DatasetList(BaseModel):
    items: list[DatasetSummary]


class DatasetImageItem(BaseModel):
    file: str
    caption: str = Field(description="the first line of the image's .txt sidecar; '' when it has none")
    width: int
    height: int
    url: str


class Dataset(BaseModel):
    name: str
    images: list[DatasetImageItem]
    added: list[str] = Field([], description="names the uploaded files were stored under")


class Caption(_Strict):
    caption: str = Field(..., max_length=MAX_CAPTION)


class TrainRequest(_Strict):
    type: TrainType = "lora"
    dataset: str = Field(..., max_length=200)
    model: str = Field(..., max_length=1000, description="base checkpoint, a name from the checkpoints list")
    output: str = Field(..., max_length=200, description="file name to save as, in the LoRA, embeddings or (for "
                                                         "DreamBooth) checkpoints folder")
    overwrite: bool = False
    steps: int = Field(100, ge=1, le=1_000_000)
    lr: float | None = Field(None, gt=0, le=1, allow_inf_nan=False,
                             description="learning rate; default 1e-4 (LoRA), 2e-6 (DreamBooth), 5e-3 (embedding)")
    batch_size: int = Field(1, ge=1, le=64)
    resolution: int | None = Field(None, ge=8, le=4096, description="default: the model's own")
    seed: int = Field(0, ge=0, le=L.MAX_SEED)
    caption: str = Field("", max_length=MAX_CAPTION, description="caption of images that have none")
    flip: bool = False
    sample_every: int = Field(0, ge=0, le=1_000_000, description="sample images every N steps (0: never)")
    sample_prompt: str = Field("", max_length=MAX_PROMPT, description="default: the first image's caption")
    sample_steps: int = Field(20, ge=1, le=L.DEFAULT_LIMITS.max_steps)
    save_every: int = Field(50, ge=1, le=1_000_000, description="keep a resumable state every N steps")
    rank: int = Field(8, ge=1, le=1024, description="LoRA rank (network dim)")
    alpha: float = Field(4.0, gt=0, le=1024, allow_inf_nan=False, description="LoRA alpha; scale = alpha / rank")
    train_text_encoder: bool = Field(False, description="LoRA and DreamBooth: train the text encoder too")
    instance_prompt: str = Field("", max_length=MAX_PROMPT, description="DreamBooth: e.g. 'a photo of sks dog'")
    class_prompt: str = Field("", max_length=MAX_PROMPT, description="DreamBooth: turns on prior preservation")
    num_class_images: int = Field(50, ge=1, le=10_000)
    token: str = Field("", max_length=100, description="embedding: the prompt word (default: the output's name)")
    init_word: str = Field("*", max_length=100)
    num_vectors: int = Field(1, ge=1, le=MAX_VECTORS)


class LossPoint(BaseModel):
    step: int
    loss: float


class TrainStatus(BaseModel):
    job_id: str
    run: str = Field(description="the run folder's id: every resume of a run continues it")
    status: str
    type: TrainType
    output: str
    label: str
    step: int
    steps: int
    losses: list[LossPoint] = Field(description="the loss curve, averaged down to at most 400 points")
    samples: list[str] = Field(description="sample image URLs, oldest first")
    error: str | None = None
    resumable: bool = Field(description="stopped before the end with a saved state: POST .../resume continues it")


class TrainJobs(BaseModel):
    items: list[TrainStatus]
