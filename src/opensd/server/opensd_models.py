"""Request and response bodies of our own routes (/opensd/v1/...), so /docs describes them."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..pipeline import limits as L
from .a1111_models import MAX_PROMPT


class Login(BaseModel):
    token: str = Field(..., max_length=4096)


class SessionInfo(BaseModel):
    token_required: bool
    authorized: bool = Field(description="whether this browser's session cookie is valid (always true "
                                         "without a token)")
    version: str


class TokenCountRequest(BaseModel):
    prompt: str = Field("", max_length=MAX_PROMPT)
    steps: int = Field(20, ge=1, le=L.DEFAULT_LIMITS.max_steps)


class TokenCountResult(BaseModel):
    tokens: int = Field(description="A1111's count: 75 per full chunk plus the tokens of the last one")
    max_tokens: int = Field(description="capacity of the chunks the prompt fills (a multiple of 75)")
    chunks: int


class Recommended(BaseModel):
    label: str = Field(description="the model family, for people: Flux.1, Z-Image, ...")
    cfg_scale: float
    steps: int
    distilled_guidance: float | None = Field(None, description="the guidance a distilled network takes (Flux.1 "
                                                               "dev; A1111's distilled_cfg_scale)")
    scheduler: str | None = Field(None, description="the schedule the family runs for Automatic")


class Checkpoint(BaseModel):
    name: str = Field(description="file name inside the checkpoints folder (or diffusion_models/ for a network "
                                  "the models folder completes); what sd_model_checkpoint takes")
    title: str
    hash: str | None = None
    family: str | None = Field(None, description="sd1, sd2, sdxl, sdxl_refiner or small (Stable Diffusion), "
                                                 "flux, chroma, sd3, z_image, flux2 or qwen_image; null if unknown "
                                                 "before loading")
    resolution: int | None = Field(None, description="native image side in pixels (64, 512, 768, 1024)")
    prediction: str | None = Field(None, description="eps or v (what the file's markers or metadata say), flow "
                                                     "for the DiT models")
    schedule: str | None = Field(None, description="discrete, zero_terminal_snr, edm (continuous sigmas) or flow")
    edit: bool = Field(False, description="an InstructPix2Pix-style edit model: takes image_cfg_scale")
    references: bool = Field(False, description="edits with reference images (the request's reference_images: "
                                                "Flux.1 Kontext, FLUX.2, Qwen-Image-Edit); from the model's family")
    max_references: int | None = Field(None, description="how many reference_images the model takes (its family's "
                                                         "limit, at most the server's); null when it takes none")
    recommended: Recommended | None = Field(None, description="the settings the model's family recommends (what "
                                                              "a request leaving them unset gets); null if unknown")


class Checkpoints(BaseModel):
    current: str | None
    items: list[Checkpoint]


class JobQueued(BaseModel):
    job_id: str
    position: int = Field(description="1 = runs next (0 = running now)")


class QueueItem(BaseModel):
    id: str
    kind: str
    task: str = Field(description="what the job does, for people: txt2img, img2img, inpaint, extras, ComfyUI, "
                                  "training, merge, convert (kind is the runner: a1111 for the first three)")
    client: str
    status: str
    label: str = Field(description="the job's prompt, or a short description")
    position: int = Field(description="0 = running, 1 = next, ...")
    created: float
    step: int | None = None
    steps: int | None = None
    error: str | None = Field(None, description="why a finished job failed (recent jobs only)")
    worker: str | None = Field(None, description="the name of the worker running it (running jobs only)")


class QueueView(BaseModel):
    running: QueueItem | None = Field(description="the running job started first")
    running_jobs: list[QueueItem] = Field(description="every running job (several with Ray workers), oldest first")
    pending: list[QueueItem]
    recent: list[QueueItem] = Field(description="the last finished jobs, newest first")


class Cleared(BaseModel):
    cancelled: int


class ImageInfoRequest(BaseModel):
    image: str = Field(..., description="the image file, base64 (a data: URL is accepted)")


class ImageInfo(BaseModel):
    infotext: str = Field(description="A1111 parameters text, empty when the image has none")
    parameters: dict[str, str]
    items: dict[str, str] = Field(description="the image's other text chunks, e.g. ComfyUI's prompt and workflow")
    request: dict[str, Any] | None = Field(description="the /sdapi/v1/txt2img request that remakes the image")
    notes: list[str]


class GalleryItem(BaseModel):
    id: int
    job_id: str
    created: float
    width: int
    height: int
    prompt: str
    negative_prompt: str
    image_url: str
    thumb_url: str


class GalleryPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[GalleryItem]


class GalleryDetail(GalleryItem):
    infotext: str
    parameters: dict[str, str]
    request: dict[str, Any] | None
    notes: list[str]


class Deleted(BaseModel):
    deleted: bool
