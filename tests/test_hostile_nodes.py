"""Hostile and edge values a client could send to the ComfyUI nodes, through POST /prompt on a
server with a tiny checkpoint: every case ends in a 400 with ComfyUI's node_errors, or in an
execution_error in /history whose message is one readable line, or runs -- never a 500, a hang, an
allocation of the machine's memory or a file outside the output folder -- and the server keeps
serving. The cases named "fixed: ..." failed before the fixes made with this sweep."""
from __future__ import annotations

import copy
import dataclasses
import time

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from server_live import BASE, models_dir
from workflow_fixtures import make_ctx

from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.workflows import execute
from opensd.workflows import types
from opensd.workflows.types import MAX_RESOLUTION, NODES, NodeError

CK = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}}
WIDE = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "wide.safetensors"}}


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def image(w=8, h=8, b=1, color=0) -> dict:
    return node("EmptyImage", width=w, height=h, batch_size=b, color=color)


def latent(w=64, h=64, b=1) -> dict:
    return node("EmptyLatentImage", width=w, height=h, batch_size=b)


def preview(src) -> dict:
    return node("PreviewImage", images=src)


def save_latent(src, prefix="latents/probe") -> dict:
    return node("SaveLatent", samples=src, filename_prefix=prefix)


def mask_of(src) -> dict:
    return node("ImageToMask", image=src, channel="red")


def one(class_type: str, **inputs) -> dict:
    """An image graph: EmptyImage 8x8 -> class_type (its `image` input) -> PreviewImage."""
    return {"i": image(), "n": node(class_type, image=["i", 0], **inputs), "o": preview(["n", 0])}


def stitch(first, second, **kw) -> dict:
    return node("ImageStitch", **{"image1": first, "image2": second, "direction": "right", "match_image_size": True,
                                  "spacing_width": 0, "spacing_color": "white", **kw})


def sampled(**nodes) -> dict:
    """The tiny model sampled one step at 64x64 and decoded; `nodes` may replace any of the graph's
    nodes or add patch nodes (a node "m" is used as the model when present)."""
    g = {"4": CK, "L": latent(), "P": node("CLIPTextEncode", clip=["4", 1], text="a"),
         "N": node("CLIPTextEncode", clip=["4", 1], text="")}
    g.update(nodes)
    g["S"] = node("KSampler", model=["m", 0] if "m" in g else ["4", 0], positive=["P", 0], negative=["N", 0],
                  latent_image=["L", 0], seed=1, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
                  denoise=1.0)
    g["D"] = node("VAEDecode", samples=["S", 0], vae=["4", 2])
    g["o"] = preview(["D", 0])
    return g


def inpaint(pixels: dict, mask_image: dict, kind="InpaintModelConditioning") -> dict:
    g = {"4": CK, "I": pixels, "MI": mask_image, "M": mask_of(["MI", 0]),
         "P": node("CLIPTextEncode", clip=["4", 1], text="a")}
    if kind == "InpaintModelConditioning":
        g["E"] = node(kind, positive=["P", 0], negative=["P", 0], vae=["4", 2], pixels=["I", 0], mask=["M", 0],
                      noise_mask=True)
        g["o"] = save_latent(["E", 2])
    else:
        g["E"] = node(kind, pixels=["I", 0], vae=["4", 2], mask=["M", 0], grow_mask_by=6)
        g["o"] = save_latent(["E", 0])
    return g


def custom(scheduler: dict) -> dict:
    """SamplerCustom over the sigmas of `scheduler`, the latent saved."""
    g = {"4": CK, "L": latent(), "P": node("CLIPTextEncode", clip=["4", 1], text="a"), "s": scheduler,
         "k": node("KSamplerSelect", sampler_name="euler")}
    g["S"] = node("SamplerCustom", model=["4", 0], add_noise=True, noise_seed=1, cfg=1.0, positive=["P", 0],
                  negative=["P", 0], sampler=["k", 0], sigmas=["s", 0], latent_image=["L", 0])
    g["o"] = save_latent(["S", 0])
    return g


def checkpoint_save(prefix, model=("4", 0)) -> dict:
    return {"4": CK, "W": WIDE, "c": node("CheckpointSave", model=list(model), clip=["4", 1], vae=["4", 2],
                                          filename_prefix=prefix)}


# two-latent nodes and the names of their (first, second) inputs
TWO_LATENTS = {"batch": ("LatentBatch", "samples1", "samples2", {}), "add": ("LatentAdd", "samples1", "samples2", {}),
               "blend": ("LatentBlend", "samples1", "samples2", {"blend_factor": 0.5}),
               "composite": ("LatentComposite", "samples_to", "samples_from", {"x": 0, "y": 0, "feather": 0}),
               "masked": ("LatentCompositeMasked", "destination", "source", {"x": 0, "y": 0, "resize_source": False})}


def load_latent(name: str, then=None) -> dict:
    g = {"l": node("LoadLatent", latent=name)}
    if then:
        kind, first, second, extra = TWO_LATENTS[then]
        g |= {"L": latent(), "b": node(kind, **{first: ["L", 0], second: ["l", 0]}, **extra),
              "o": save_latent(["b", 0])}
    else:
        g["o"] = save_latent(["l", 0])
    return g


def size(from_image: dict, into: str, **inputs) -> dict:
    """GetImageSize of `from_image` linked into the node `into`'s inputs (values ["g", slot])."""
    return {"s": from_image, "g": node("GetImageSize", image=["s", 0]), "n": node(into, **inputs),
            "o": preview(["n", 0])}


def _with(g: dict, node_id: str, **inputs) -> dict:
    g = copy.deepcopy(g)
    g[node_id]["inputs"].update(inputs)
    return g


def _area_strength(strength) -> dict:
    g = sampled(a=node("ConditioningSetAreaStrength", conditioning=["P", 0], strength=strength))
    g["S"]["inputs"]["positive"] = ["a", 0]
    return g


def _lcm_upscale(**inputs) -> dict:
    g = custom(node("BasicScheduler", model=["4", 0], scheduler="normal", steps=2, denoise=1.0))
    g["k"] = node("SamplerLCMUpscale", **{"scale_ratio": 1.5, "scale_steps": -1, "upscale_method": "bislerp", **inputs})
    return g


def _load_output(name) -> dict:
    return {"l": node("LoadImageOutput", image=name), "o": preview(["l", 0])}


def _diff_controlnet(name) -> dict:
    g = sampled(d=node("DiffControlNetLoader", model=["4", 0], control_net_name=name), I=image(64, 64),
                a=node("ControlNetApplyAdvanced", positive=["P", 0], negative=["N", 0], control_net=["d", 0],
                       image=["I", 0], strength=1.0, start_percent=0.0, end_percent=1.0))
    g["S"]["inputs"]["positive"], g["S"]["inputs"]["negative"] = ["a", 0], ["a", 1]
    return g


def _rebatched(size) -> dict:
    g = sampled(L=latent(b=2), r=node("RebatchLatents", latents=["L", 0], batch_size=size))
    g["S"]["inputs"]["latent_image"] = ["r", 0]
    return g


def _clip_attention(**factors) -> dict:
    g = sampled(c=node("CLIPAttentionMultiply", clip=["4", 1], **{"q": 1.0, "k": 1.0, "v": 1.0, "out": 1.0, **factors}))
    g["P"]["inputs"]["clip"] = ["c", 0]
    return g


# (id, graph, expectation): ("400", node id, error type) -- refused by validation with ComfyUI's
# node_errors; ("budget", text) -- refused as over the work budget; ("error", text) -- an
# execution_error whose one-line message contains text; ("ok", None) -- runs.
INVALID = "invalid_input_type"
CASES = [
    # wrong types, non-finite and out-of-range numbers, on the widgets of the new nodes
    ("EmptyImage width string", one("ImageRotate", rotation="none") | {"i": image(w="wide")}, ("400", "i", INVALID)),
    ("EmptyImage width null", {"i": image(w=None), "o": preview(["i", 0])}, ("400", "i", INVALID)),
    ("EmptyImage width list", {"i": image(w=[1]), "o": preview(["i", 0])}, ("400", "i", "bad_linked_input")),
    ("EmptyImage width object", {"i": image(w={"a": 1}), "o": preview(["i", 0])}, ("400", "i", INVALID)),
    ("EmptyImage 100000 wide", {"i": image(w=100000), "o": preview(["i", 0])}, ("400", "i", "value_bigger_than_max")),
    ("EmptyImage 0 high", {"i": image(h=0), "o": preview(["i", 0])}, ("400", "i", "value_smaller_than_min")),
    ("EmptyImage width 1e308", {"i": image(w=1e308), "o": preview(["i", 0])}, ("400", "i", "value_bigger_than_max")),
    ("EmptyImage colour -1", {"i": image(color=-1), "o": preview(["i", 0])}, ("400", "i", "value_smaller_than_min")),
    ("RepeatImageBatch amount 10^6", one("RepeatImageBatch", amount=10**6), ("400", "n", "value_bigger_than_max")),
    ("RepeatImageBatch amount 1.5e3 string", one("RepeatImageBatch", amount="1.5e3"), ("400", "n", INVALID)),
    ("ImageFromBatch index past MAX", one("ImageFromBatch", batch_index=10**9, length=1),
     ("400", "n", "value_bigger_than_max")),
    ("ImageFromBatch length 0", one("ImageFromBatch", batch_index=0, length=0), ("400", "n", "value_smaller_than_min")),
    ("ImageRotate unknown option", one("ImageRotate", rotation="45 degrees"), ("400", "n", "value_not_in_list")),
    ("ImageRotate null", one("ImageRotate", rotation=None), ("400", "n", "value_not_in_list")),
    ("ImageFlip number", one("ImageFlip", flip_method=1), ("400", "n", "value_not_in_list")),
    ("ImageStitch spacing 10^9", {"i": image(), "n": stitch(["i", 0], ["i", 0], spacing_width=10**9),
                                  "o": preview(["n", 0])}, ("400", "n", "value_bigger_than_max")),
    ("ImageStitch unknown colour", {"i": image(), "n": stitch(["i", 0], ["i", 0], spacing_color="pink"),
                                    "o": preview(["n", 0])}, ("400", "n", "value_not_in_list")),
    ("fixed: Canny 'nan' threshold", one("Canny", low_threshold="nan", high_threshold=0.5), ("400", "n", INVALID)),
    ("fixed: Canny 'inf' threshold", one("Canny", low_threshold=0.1, high_threshold="inf"), ("400", "n", INVALID)),
    ("ThresholdMask value 5", {"i": image(), "m": mask_of(["i", 0]), "t": node("ThresholdMask", mask=["m", 0], value=5),
                               "n": node("MaskToImage", mask=["t", 0]), "o": preview(["n", 0])},
     ("400", "t", "value_bigger_than_max")),
    ("KSampler steps 0", _with(sampled(), "S", steps=0), ("400", "S", "value_smaller_than_min")),
    ("KSampler denoise 1.5", _with(sampled(), "S", denoise=1.5), ("400", "S", "value_bigger_than_max")),
    ("fixed: ConditioningSetAreaStrength 'inf'", _area_strength("inf"), ("400", "a", INVALID)),
    ("fixed: DifferentialDiffusion strength 'nan'",
     sampled(m=node("DifferentialDiffusion", model=["4", 0], strength="nan")),
     ("400", "m", INVALID)),
    ("ModelMergeSubtract multiplier 1e9",
     sampled(W=WIDE, m=node("ModelMergeSubtract", model1=["4", 0], model2=["W", 0], multiplier=1e9)),
     ("400", "m", "value_bigger_than_max")),
    ("PolyexponentialScheduler steps 0", custom(node("PolyexponentialScheduler", steps=0, sigma_max=14.6,
                                                     sigma_min=0.03, rho=1.0)), ("400", "s", "value_smaller_than_min")),
    ("VPScheduler steps 10^7", custom(node("VPScheduler", steps=10**7, beta_d=19.9, beta_min=0.1, eps_s=0.001)),
     ("400", "s", "value_bigger_than_max")),
    ("LaplaceScheduler mu string", custom(node("LaplaceScheduler", steps=2, sigma_max=14.6, sigma_min=0.03, mu="x",
                                               beta=0.5)), ("400", "s", INVALID)),
    ("SamplerLCMUpscale ratio 100", _lcm_upscale(scale_ratio=100.0), ("400", "k", "value_bigger_than_max")),
    ("Morphology kernel_size 2", one("Morphology", operation="erode", kernel_size=2),
     ("400", "n", "value_smaller_than_min")),
    ("Morphology kernel_size 1000", one("Morphology", operation="dilate", kernel_size=1000),
     ("400", "n", "value_bigger_than_max")),
    ("Morphology unknown operation", one("Morphology", operation="blur", kernel_size=3), ("400", "n", "value_not_in_list")),
    ("Morphology kernel 999 on an 8 x 8 image runs", one("Morphology", operation="gradient", kernel_size=999),
     ("ok", None)),
    ("RebatchLatents batch_size 0", _rebatched(0), ("400", "r", "value_smaller_than_min")),
    ("RebatchLatents batch_size 5000", _rebatched(5000), ("400", "r", "value_bigger_than_max")),
    ("RebatchLatents batch_size string", _rebatched("two"), ("400", "r", INVALID)),
    ("RebatchLatents of 2 into a KSampler batch by batch runs", _rebatched(1), ("ok", None)),
    ("RebatchImages of 3 in 2s, previewed batch by batch", {"a": image(8, 8, 3), "r": node(
        "RebatchImages", images=["a", 0], batch_size=2), "o": preview(["r", 0])}, ("ok", None)),
    ("APG eta 11", sampled(m=node("APG", model=["4", 0], eta=11.0, norm_threshold=5.0, momentum=0.0)),
     ("400", "m", "value_bigger_than_max")),
    ("APG momentum -0.1", sampled(m=node("APG", model=["4", 0], eta=1.0, norm_threshold=5.0, momentum=-0.1)),
     ("400", "m", "value_smaller_than_min")),
    ("APG norm_threshold 'inf'", sampled(m=node("APG", model=["4", 0], eta=1.0, norm_threshold="inf", momentum=0.0)),
     ("400", "m", INVALID)),
    ("APG at cfg 1 (no negative evaluated) runs", _with(sampled(m=node("APG", model=["4", 0], eta=0.5,
                                                                       norm_threshold=1.0, momentum=0.9)), "S", cfg=1.0),
     ("ok", None)),
    ("TCFG of a CLIP", sampled(m=node("TCFG", model=["4", 1])), ("400", "m", "return_type_mismatch")),
    ("TCFG at cfg 1 runs", _with(sampled(m=node("TCFG", model=["4", 0])), "S", cfg=1.0), ("ok", None)),
    ("Mahiro model missing", sampled(m=node("Mahiro")), ("400", "m", "required_input_missing")),
    ("DiffControlNetLoader unknown file", _diff_controlnet("../../tiny.safetensors"), ("400", "d", "value_not_in_list")),
    ("DiffControlNetLoader model from a CLIP", _with(_diff_controlnet("x.safetensors"), "d", model=["4", 1]),
     ("400", "d", "return_type_mismatch")),
    ("CLIPAttentionMultiply q 11", _clip_attention(q=11.0), ("400", "c", "value_bigger_than_max")),
    ("CLIPAttentionMultiply out -1", _clip_attention(out=-1.0), ("400", "c", "value_smaller_than_min")),
    ("CLIPAttentionMultiply k string", _clip_attention(k="big"), ("400", "c", INVALID)),
    ("CLIPAttentionMultiply v 'nan'", _clip_attention(v="nan"), ("400", "c", INVALID)),
    ("CLIPAttentionMultiply clip from a MODEL", _with(_clip_attention(), "c", clip=["4", 0]),
     ("400", "c", "return_type_mismatch")),
    ("CLIPAttentionMultiply all 0 runs", _clip_attention(q=0.0, k=0.0, v=0.0, out=0.0), ("ok", None)),
    # files: names and prefixes that would leave their folder
    ("SaveLatent prefix ../../x", {"l": latent(), "o": save_latent(["l", 0], "../../x")},
     ("400", "o", "custom_validation_failed")),
    ("SaveLatent prefix absolute", {"l": latent(), "o": save_latent(["l", 0], "/tmp/x")},
     ("400", "o", "custom_validation_failed")),
    ("SaveLatent prefix empty", {"l": latent(), "o": save_latent(["l", 0], "")},
     ("400", "o", "custom_validation_failed")),
    ("SaveLatent prefix NUL", {"l": latent(), "o": save_latent(["l", 0], "a\x00b")},
     ("400", "o", "custom_validation_failed")),
    ("LoadLatent ../x.latent", load_latent("../x.latent"), ("400", "l", "custom_validation_failed")),
    ("LoadImageOutput ../../x.png [output]", _load_output("../../x.png [output]"),
     ("400", "l", "custom_validation_failed")),
    ("LoadImageOutput absolute [output]", _load_output("/etc/passwd [output]"), ("400", "l", "custom_validation_failed")),
    ("LoadImageOutput number", _load_output(7), ("400", "l", "custom_validation_failed")),
    ("LoadImageOutput object", _load_output({"a": 1}), ("400", "l", INVALID)),
    ("LoadImageOutput missing file", _load_output("nothing.png [output]"), ("400", "l", "custom_validation_failed")),
    ("LoadLatent absolute", load_latent("/etc/passwd"), ("400", "l", "custom_validation_failed")),
    ("LoadLatent null", load_latent(None), ("400", "l", "custom_validation_failed")),
    ("CheckpointSave prefix /..", checkpoint_save("checkpoints/.."), ("400", "c", "custom_validation_failed")),
    ("CheckpointSave prefix a/../../x", checkpoint_save("a/../../x"), ("400", "c", "custom_validation_failed")),
    ("CheckpointSave absolute prefix", checkpoint_save("/tmp/x"), ("400", "c", "custom_validation_failed")),
    ("CheckpointSave drive prefix", checkpoint_save("C:\\x"), ("400", "c", "custom_validation_failed")),
    # fixed: a prefix linked from a PrimitiveString was refused as empty; it is checked when the node runs
    ("fixed: SaveLatent prefix from a PrimitiveString", {"p": node("PrimitiveString", value="latents/linked"),
                                                         "l": latent(), "o": save_latent(["l", 0], ["p", 0])},
     ("ok", None)),
    ("SaveLatent prefix ../../x from a PrimitiveString", {"p": node("PrimitiveString", value="../../x"), "l": latent(),
                                                          "o": save_latent(["l", 0], ["p", 0])},
     ("error", "Saving image outside the output folder is not allowed.")),
    ("CheckpointSave absolute prefix from a PrimitiveString",
     checkpoint_save(["p", 0]) | {"p": node("PrimitiveString", value="/tmp/opensd-hostile-x")},
     ("error", "Saving image outside the output folder is not allowed.")),
    # runtime: one readable line in the execution_error
    ("ImageFromBatch index past the end", {"i": image(b=2), "n": node("ImageFromBatch", image=["i", 0], batch_index=100,
                                                                      length=5), "o": preview(["n", 0])}, ("ok", None)),
    ("ImageFromBatch negative past the start", {"i": image(b=2), "n": node("ImageFromBatch", image=["i", 0],
                                                                           batch_index=-100, length=1),
                                                "o": preview(["n", 0])}, ("ok", None)),
    ("ImageStitch batches 1 and 3", {"a": image(), "b": image(16, 8, 3), "n": stitch(["a", 0], ["b", 0]),
                                     "o": preview(["n", 0])}, ("ok", None)),
    ("Canny low above high", one("Canny", low_threshold=0.9, high_threshold=0.1), ("error", "above high_threshold")),
    ("ModelMerge of a model that does not fit",
     sampled(W=WIDE, m=node("ModelMergeSimple", model1=["4", 0], model2=["W", 0], ratio=0.5)),
     ("error", "does not fit")),
    ("fixed: a CLIP of another model conditions the MODEL", sampled(W=WIDE, P=node("CLIPTextEncode", clip=["W", 1],
                                                                                  text="a")),
     ("error", "positive: a conditioning 128 wide does not fit the model, which takes 64")),
    ("CLIPMerge of a CLIP that does not fit", sampled(W=WIDE, c=node("CLIPMergeSimple", clip1=["4", 1], clip2=["W", 1],
                                                                     ratio=0.5), P=node("CLIPTextEncode", clip=["c", 0],
                                                                                        text="a")),
     ("error", "clip2: wide.safetensors does not fit tiny.safetensors")),
    ("ModelSamplingContinuousEDM bounds 0",
     sampled(m=node("ModelSamplingContinuousEDM", model=["4", 0], sampling="eps", sigma_max=0, sigma_min=0)),
     ("error", "sigma_min: must be above 0")),
    ("ModelSamplingContinuousV bounds reversed",
     sampled(m=node("ModelSamplingContinuousV", model=["4", 0], sampling="v_prediction", sigma_max=1, sigma_min=5)),
     ("error", "must be below sigma_max")),
    ("SkipLayerGuidanceSD3 on a UNet", sampled(m=node("SkipLayerGuidanceSD3", model=["4", 0], layers="x,99999999999",
                                                       scale=3.0, start_percent=0.0, end_percent=1.0)),
     ("error", "not available")),
    ("BetaSamplingScheduler alpha 0", custom(node("BetaSamplingScheduler", model=["4", 0], steps=2, alpha=0, beta=0.6)),
     ("error", "alpha: must be above 0")),
    ("PolyexponentialScheduler bounds 0", custom(node("PolyexponentialScheduler", steps=2, sigma_max=0, sigma_min=0,
                                                      rho=1.0)), ("error", "sigma_min: must be above 0")),
    # fixed: sizes capped before allocating (ComfyUI's maxima multiply out to terabytes)
    ("fixed: EmptyImage 16384 x 16384 x 4096",
     {"i": image(MAX_RESOLUTION, MAX_RESOLUTION, 4096), "o": preview(["i", 0])},
     ("error", "EmptyImage: 4096 x 16384 x 16384 x 3 is 3,298,534,883,328 values, more than")),
    ("fixed: RepeatImageBatch of a 1024 x 1024 image 4096 times",
     {"i": image(1024, 1024), "n": node("RepeatImageBatch", image=["i", 0], amount=4096), "o": preview(["n", 0])},
     ("error", "RepeatImageBatch: 4096 x 1024 x 1024 x 3 is")),
    ("fixed: EmptyLatentImage 16384 x 16384 x 4096", {"l": latent(MAX_RESOLUTION, MAX_RESOLUTION, 4096),
                                                      "o": save_latent(["l", 0])},
     ("error", "EmptyLatentImage: 4096 x 4 x 2048 x 2048")),
    ("fixed: ImageScale to 16384 x 16384 x 64", {"i": image(8, 8, 64), "n": node(
        "ImageScale", image=["i", 0], upscale_method="nearest-exact", width=MAX_RESOLUTION, height=MAX_RESOLUTION,
        crop="disabled"), "o": preview(["n", 0])}, ("error", "resize: 64 x 3 x 16384 x 16384")),
    ("fixed: ImageStitch matching a 16384:1 image", {"a": image(1, MAX_RESOLUTION), "b": image(MAX_RESOLUTION, 1),
                                                     "n": stitch(["a", 0], ["b", 0]), "o": preview(["n", 0])},
     ("error", "resize: 1 x 3 x 16384 x 268435456")),
    ("fixed: ImageStitch of 4096 1 x 1 images and a 2048 x 2048 one",
     {"a": image(1, 1, 4096), "b": image(2048, 2048), "n": stitch(["a", 0], ["b", 0], match_image_size=False),
      "o": preview(["n", 0])}, ("error", "ImageStitch: 4096 x 2048 x 2049 x 3 is")),
    ("fixed: VAEDecode of 2 latents of 16384 x 16384",
     {"4": CK, "l": latent(MAX_RESOLUTION, MAX_RESOLUTION, 2), "d": node("VAEDecode", samples=["l", 0], vae=["4", 2]),
      "o": preview(["d", 0])}, ("error", "VAEDecode: 2 x 3 x 16384 x 16384")),
    # fixed: numbers through links keep the input's bounds
    ("fixed: GetImageSize width 16384 as a batch size", size(image(MAX_RESOLUTION, 1), "EmptyImage", width=8, height=8,
                                                             batch_size=["g", 0], color=0),
     ("error", "batch_size: 16384 from node g is above the input's maximum of 4096")),
    ("fixed: GetImageSize width 16384 as a repeat amount",
     size(image(MAX_RESOLUTION, 1), "RepeatImageBatch", image=["s", 0], amount=["g", 0]),
     ("error", "amount: 16384 from node g is above the input's maximum of 4096")),
    ("GetImageSize in range drives EmptyImage", size(image(8, 16, 2), "EmptyImage", width=["g", 0], height=["g", 1],
                                                     batch_size=["g", 2], color=0), ("ok", None)),
    # fixed: images too small for what the node does
    ("fixed: ImageStitch matching a 1 x 16384 image to a 1-pixel one",
     {"a": image(1, 1), "b": image(1, MAX_RESOLUTION), "n": stitch(["a", 0], ["b", 0]), "o": preview(["n", 0])},
     ("ok", None)),
    ("fixed: Canny of a 2 x 2 image", {"i": image(2, 2), "n": node("Canny", image=["i", 0], low_threshold=0.1,
                                                                   high_threshold=0.2), "o": preview(["n", 0])},
     ("error", "image: a 2x2 image is too small for Canny")),
    ("fixed: VAEEncode of a 7 x 7 image",
     {"4": CK, "i": image(7, 7), "e": node("VAEEncode", pixels=["i", 0], vae=["4", 2]), "o": save_latent(["e", 0])},
     ("error", "pixels: a 7x7 image is smaller than the VAE's")),
    ("fixed: InpaintModelConditioning of a 7 x 9 image", inpaint(image(7, 9), image(7, 9)),
     ("error", "pixels: a 7x9 image is smaller than the VAE's")),
    # fixed: masks that do not fit the images
    ("fixed: InpaintModelConditioning 3 masks for 2 images", inpaint(image(64, 64, 2), image(64, 64, 3, 0xFFFFFF)),
     ("error", "mask: 3 masks for 2 images")),
    ("fixed: VAEEncodeForInpaint 3 masks for 2 images",
     inpaint(image(16, 16, 2), image(8, 8, 3, 0xFFFFFF), "VAEEncodeForInpaint"),
     ("error", "mask: 3 masks for 2 images")),
    ("InpaintModelConditioning mask of another size", inpaint(image(64, 64), image(13, 7, 1, 0xFFFFFF)), ("ok", None)),
    ("fixed: VAEDecode of an SD3 latent with an SD VAE",
     {"4": CK, "l": node("EmptySD3LatentImage", width=64, height=64, batch_size=1),
      "d": node("VAEDecode", samples=["l", 0], vae=["4", 2]), "o": preview(["d", 0])},
     ("error", "samples: a latent of shape (1, 16, 8, 8) does not fit this VAE, which decodes 4-channel latents")),
    # fixed: .latent files holding something else than a latent
    ("fixed: LoadLatent of a 1-D tensor", load_latent("flat.latent"), ("error", "holds a latent of shape (3,), not")),
    ("fixed: LoadLatent of an empty batch", load_latent("empty.latent"),
     ("error", "holds a latent of shape (0, 4, 8, 8)")),
    *((f"fixed: {TWO_LATENTS[k][0]} of 4 and 7 channels", load_latent("seven.latent", then=k),
       ("error", f"{TWO_LATENTS[k][2]}: latents of shape (1, 7, 8, 8) cannot be combined with latents of shape "
                 "(1, 4, 8, 8)")) for k in TWO_LATENTS),
    ("LoadLatent of integers runs", load_latent("ints.latent"), ("ok", None)),
    ("fixed: KSampler of a 7-channel latent", sampled(L=node("LoadLatent", latent="sevens.latent")),
     ("error", "latent_image: a latent of 7 channels does not fit tiny.safetensors, which samples 4")),
    ("KSampler of an empty 7-channel latent (ComfyUI's empty-latent fix)",
     sampled(L=node("LoadLatent", latent="seven.latent")), ("ok", None)),
    # fixed: the work budget counts what will run, however it is spelled
    ("fixed: SamplerCustom 10000 steps of 64 1024 x 1024 images", _with(
        custom(node("BasicScheduler", model=["4", 0], scheduler="normal", steps=10000, denoise=1.0)), "L",
        width=1024, height=1024, batch_size=64), ("budget", "node S: 64 images of 1024x1024 x 10000 steps")),
    ("fixed: VPScheduler 10000 steps of 64 1024 x 1024 images", _with(
        custom(node("VPScheduler", steps=10000, beta_d=19.9, beta_min=0.1, eps_s=0.001)), "L",
        width=1024, height=1024, batch_size=64), ("budget", "x 10000 steps")),
    ("fixed: SamplerLCMUpscale enlarging 20x counts its size", _with(_lcm_upscale(scale_ratio=20.0), "L", width=1024,
                                                                     height=1024, batch_size=16),
     ("budget", "node S: 16 images of 1024x1024 x 2 steps, enlarged up to 20x")),
    ("fixed: KSampler steps and sizes as strings", _with(_with(sampled(), "S", steps="10000"), "L", width="1024",
                                                          height="1024", batch_size="64"),
     ("budget", "node S: 64 images of 1024x1024 x 10000 steps")),
    ("fixed: KSampler steps and batch from PrimitiveInt nodes", _with(_with(sampled(
        s=node("PrimitiveInt", value=10000), b=node("PrimitiveInt", value=64)), "S", steps=["s", 0]), "L",
        width=1024, height=1024, batch_size=["b", 0]), ("budget", "node S: 64 images of 1024x1024 x 10000 steps")),
    ("RebatchLatents between an empty latent and KSampler still counts its images", _with(_with(
        _rebatched(1), "L", width=1024, height=1024, batch_size=64), "S", steps=10000),
     ("budget", "node S: 64 images of 1024x1024 x 10000 steps")),
    ("fixed: KSampler linked by integer ids", {
        "4": CK, "5": latent(1024, 1024, 64), "6": node("CLIPTextEncode", clip=[4, 1], text="a"),
        "3": node("KSampler", model=[4, 0], positive=[6, 0], negative=[6, 0], latent_image=[5, 0], seed=1, steps=10000,
                  cfg=2.0, sampler_name="euler", scheduler="normal", denoise=1.0),
        "9": save_latent([3, 0])}, ("budget", "node 3: 64 images of 1024x1024 x 10000 steps")),
]


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """(client, root): a server on a models folder with the tiny checkpoint and a wider one (for
    merges and conditionings that do not fit), its input folder holding the .latent files the cases load."""
    root = tmp_path_factory.mktemp("hostile")
    models = models_dir(root)
    wide = dataclasses.replace(  # wider UNet and text encoder: neither merges nor conditions the tiny one
        TINY, unet=dataclasses.replace(TINY.unet, model_channels=64, context_dim=128),
        text_encoders=(dataclasses.replace(TINY.text_encoders[0], width=128),))
    write_random_checkpoint(models / "Stable-diffusion" / "wide.safetensors", wide)
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=root / "out")), base_url=BASE) as client:
        inputs = client.app.state.opensd.settings.data_dir / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        files = {"flat": torch.zeros(3), "empty": torch.zeros(0, 4, 8, 8), "seven": torch.zeros(1, 7, 8, 8),
                 "ints": torch.zeros(1, 4, 8, 8, dtype=torch.int64), "sevens": torch.ones(1, 7, 8, 8)}
        for name, samples in files.items():
            save_file({"latent_tensor": samples, "latent_format_version_0": torch.tensor([])},
                      str(inputs / f"{name}.latent"))
        yield client, root


def _run(client, graph: dict) -> dict:
    r = client.post("/prompt", json={"prompt": graph})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        return {"status": 400, "body": r.json()}
    pid, deadline = r.json()["prompt_id"], time.time() + 30
    while not (done := client.get(f"/history/{pid}").json()) and time.time() < deadline:
        time.sleep(0.02)
    assert done, "the graph did not finish in 30 s"
    return {"status": 200, "history": done[pid]}


def _written_outside(root, before: set) -> set:
    """Files that appeared outside the ComfyUI output and temp folders (the job store aside)."""
    allowed = (root / "out" / "comfy", root / "out" / "temp")
    return {p for p in root.rglob("*") if p.is_file() and p not in before and "sqlite" not in p.name
            and not any(p.is_relative_to(a) for a in allowed)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_graph_is_answered_in_one_line(probe, case):
    client, root = probe
    _, graph, (kind, needle, *error_type) = case
    before = set(root.rglob("*"))
    result = _run(client, graph)
    if kind == "budget":
        assert result["status"] == 400, result
        error = result["body"]["error"]
        assert error["type"] == "work_budget" and needle in error["message"], error
    elif kind == "400":
        assert result["status"] == 400, result
        body = result["body"]
        assert body["error"]["type"] == "prompt_outputs_failed_validation", body
        (error, *_) = body["node_errors"][needle]["errors"]
        assert error["type"] == error_type[0], error
    else:
        assert result["status"] == 200, result
        status = result["history"]["status"]
        errors = [data for kind_, data in status["messages"] if kind_ == "execution_error"]
        if kind == "ok":
            assert status["status_str"] == "success", errors
        else:
            assert status["status_str"] == "error" and len(errors) == 1, status
            message = errors[0]["exception_message"]
            assert needle in message and "\n" not in message, message
            assert "alloc_cpu" not in message and "Traceback" not in message, message
    assert not _written_outside(root, before)
    assert client.get("/internal/ping").json()["status"] == "ok"


def test_still_samples_after_the_sweep(probe):
    client, _ = probe
    result = _run(client, sampled())
    assert result["history"]["status"]["status_str"] == "success"


def test_an_allocator_failure_is_one_line(tmp_path, monkeypatch):
    """A node the caps do not cover that runs out of memory: the allocator's page of C++ becomes one line."""
    def fails(call, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 13194139533312 bytes.\nframe #0: c10::...")
    monkeypatch.setitem(NODES, "ImageInvert", dataclasses.replace(NODES["ImageInvert"], fn=fails))
    with pytest.raises(NodeError) as e:
        execute({"i": image(), "n": node("ImageInvert", image=["i", 0]), "o": preview(["n", 0])},
                make_ctx(None, None, tmp_path))
    assert e.value.exception_type == "MemoryError"
    assert e.value.exception_message == ("out of memory: this node needs more memory than is free; ask for fewer or "
                                         "smaller images")


def test_latent_batch_checks_the_joined_size(tmp_path, monkeypatch):
    """Two latents each within the cap whose batch together is not (the cap lowered: at its real
    value the inputs alone would take gigabytes)."""
    monkeypatch.setattr(types, "MAX_ELEMENTS", 3 * 4 * 8 * 8)
    graph = {"l": latent(64, 64, 2), "r": node("LatentBatch", samples1=["l", 0], samples2=["l", 0]),
             "o": save_latent(["r", 0])}
    with pytest.raises(NodeError) as e:
        execute(graph, make_ctx(None, None, tmp_path))
    assert e.value.exception_message.startswith("LatentBatch: 4 x 4 x 8 x 8 is 1,024 values, more than the 768")


def test_skip_layer_numbers_too_long_for_an_index_are_ignored():
    """As indices past the network are; Python would refuse to convert 5000 digits (a ValueError
    naming sys.set_int_max_str_digits)."""
    from opensd.workflows.nodes_guidance import _layer_numbers
    assert _layer_numbers("9" * 5000 + ", 7,x8") == [7, 8]


def test_a_graph_holding_too_much_together_is_one_line(tmp_path, monkeypatch):
    """Each node within its own cap, their outputs together past the graph's; an output passed on
    unchanged (ImageStitch without image2) is not counted twice."""
    monkeypatch.setattr(types, "MAX_GRAPH_ELEMENTS", 2 * 8 * 8 * 3 + 10)
    ctx = make_ctx(None, None, tmp_path)
    same = {"a": image(), "s": node("ImageStitch", image1=["a", 0], direction="right", match_image_size=True,
                                    spacing_width=0, spacing_color="white"), "o": preview(["s", 0])}
    execute(same, ctx)
    three = {"a": image(color=1), "b": image(color=2), "c": image(color=3),
             "s": stitch(["a", 0], ["b", 0], match_image_size=False), "o": preview(["c", 0]), "p": preview(["s", 0])}
    with pytest.raises(NodeError) as e:
        execute(three, ctx)
    assert e.value.exception_message.startswith("the graph's node outputs would hold ")
    assert "more than the 394 one graph may" in e.value.exception_message
