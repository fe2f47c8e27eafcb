"""/object_info for the nodes issues 22 and 23 added, compared with ComfyUI's own definitions (its
INPUT_TYPES, RETURN_TYPES/NAMES, CATEGORY, display names and module), transcribed here as JSON:
the same input names in the same order, types, defaults, bounds and steps (ints stay ints), the
same outputs. Model and image lists are empty without a context."""
import json

import pytest

from opensd.workflows import object_info
from opensd.workflows.nodes_core import SAMPLERS, SCHEDULERS

MAX = 16384
LATENT, IMAGE, MASK, COND = ["LATENT"], ["IMAGE"], ["MASK"], ["CONDITIONING"]
UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
SEED = ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}]
CFG = ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}]
STEPS = ["INT", {"default": 20, "min": 1, "max": 10000}]
DENOISE = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]
TEXT = ["STRING", {"multiline": True, "dynamicPrompts": True}]
HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


RATIO = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]
TEXT_IN = ["STRING", {"multiline": True}]


def i(default, lo, hi=MAX, step=None):
    opts = {"default": default, "min": lo, "max": hi}
    if step is not None:
        opts["step"] = step
    return ["INT", opts]


def f(default, lo, hi, step, **extra):
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def sigma(default):
    return f(default, 0.0, 5000.0, 0.01, round=False)


def opt(default, hi=100.0):  # the sampler-option nodes' floats
    return f(default, 0.0, hi, 0.01, round=False)


def TEMPORAL(verb):  # VAEDecodeTiled / VAEEncodeTiled: for video VAEs
    return {"temporal_size": ["INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                      "tooltip": f"Only used for video VAEs: Amount of frames to {verb} at a time."}],
            "temporal_overlap": ["INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                         "tooltip": "Only used for video VAEs: Amount of frames to overlap."}]}


CUSTOM = "comfy_extras.nodes_custom_sampler"
IMAGES = "comfy_extras.nodes_images"
SHRINK = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]
LAYERS = ["STRING", {"default": "7, 8, 9", "multiline": False}]
SLG = {"scale": f(3.0, 0.0, 10.0, 0.1), "start_percent": f(0.01, 0.0, 1.0, 0.001),
       "end_percent": f(0.15, 0.0, 1.0, 0.001)}
SLG_DESCRIPTION = "Generic version of SkipLayerGuidance node that can be used on every DiT model."


# name: (required, outputs, category, display name, python module, extra fields)
EXPECTED = {
    # latent
    "LatentUpscaleBy": ({"samples": LATENT, "upscale_method": [UPSCALE[:4] + ["bislerp"]],
                         "scale_by": f(1.5, 0.01, 8.0, 0.01)}, ["LATENT"], "latent", "Upscale Latent By", "nodes", {}),
    "LatentAdd": ({"samples1": LATENT, "samples2": LATENT}, ["LATENT"], "latent/advanced", "LatentAdd",
                  "comfy_extras.nodes_latent", {}),
    "LatentSubtract": ({"samples1": LATENT, "samples2": LATENT}, ["LATENT"], "latent/advanced", "LatentSubtract",
                       "comfy_extras.nodes_latent", {}),
    "LatentMultiply": ({"samples": LATENT, "multiplier": f(1.0, -10.0, 10.0, 0.01)}, ["LATENT"], "latent/advanced",
                       "LatentMultiply", "comfy_extras.nodes_latent", {}),
    "LatentComposite": ({"samples_to": LATENT, "samples_from": LATENT, "x": i(0, 0, step=8), "y": i(0, 0, step=8),
                         "feather": i(0, 0, step=8)}, ["LATENT"], "latent", "Latent Composite", "nodes", {}),
    "LatentCompositeMasked": ({"destination": LATENT, "source": LATENT, "x": i(0, 0, step=8), "y": i(0, 0, step=8),
                               "resize_source": ["BOOLEAN", {"default": False}]}, ["LATENT"], "latent",
                              "LatentCompositeMasked", "comfy_extras.nodes_mask", {"optional": {"mask": MASK}}),
    "LatentBlend": ({"samples1": LATENT, "samples2": LATENT,
                     "blend_factor": ["FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01}]},
                    ["LATENT"], "_for_testing", "Latent Blend", "nodes", {}),
    "LatentFromBatch": ({"samples": LATENT, "batch_index": i(0, 0, 63), "length": i(1, 1, 64)}, ["LATENT"],
                        "latent/batch", "Latent From Batch", "nodes", {}),
    "RepeatLatentBatch": ({"samples": LATENT, "amount": i(1, 1, 64)}, ["LATENT"], "latent/batch",
                          "Repeat Latent Batch", "nodes", {}),
    "LatentBatch": ({"samples1": LATENT, "samples2": LATENT}, ["LATENT"], "latent/batch", "LatentBatch",
                    "comfy_extras.nodes_latent", {}),
    "SaveLatent": ({"samples": LATENT, "filename_prefix": ["STRING", {"default": "latents/ComfyUI"}]}, [],
                   "_for_testing", "SaveLatent", "nodes", {"output_node": True, "hidden": HIDDEN}),
    "LoadLatent": ({"latent": [[]]}, ["LATENT"], "_for_testing", "LoadLatent", "nodes", {}),
    **{name: ({f"{kind}1": [kind.upper()], f"{kind}2": [kind.upper()], **extra}, [kind.upper()],
               "advanced/model_merging", name, "comfy_extras.nodes_model_merging", {})
       for name, kind, extra in [
        ("ModelMergeSimple", "model", {"ratio": f(1.0, 0.0, 1.0, 0.01)}),
        ("ModelMergeSubtract", "model", {"multiplier": f(1.0, -10.0, 10.0, 0.01)}),
        ("ModelMergeAdd", "model", {}),
        ("CLIPMergeSimple", "clip", {"ratio": f(1.0, 0.0, 1.0, 0.01)}),
        ("CLIPMergeSubtract", "clip", {"multiplier": f(1.0, -10.0, 10.0, 0.01)}),
        ("CLIPMergeAdd", "clip", {}),
    ]},
    **{name: ({kind.lower(): [kind], "filename_prefix": ["STRING", {"default": prefix}]}, [], "advanced/model_merging",
              name, "comfy_extras.nodes_model_merging", {"output_node": True, "hidden": HIDDEN})
       for name, kind, prefix in (("CLIPSave", "CLIP", "clip/ComfyUI"), ("ModelSave", "MODEL", "diffusion_models/ComfyUI"),
                                  ("VAESave", "VAE", "vae/ComfyUI_vae"))},
    "ModelMergeBlocks": ({"model1": ["MODEL"], "model2": ["MODEL"], **{k: RATIO for k in ("input", "middle", "out")}},
                         ["MODEL"], "advanced/model_merging", "ModelMergeBlocks", "comfy_extras.nodes_model_merging",
                         {}),
    # comfy_extras/nodes_model_merging_model_specific.py: one ratio per block prefix
    **{name: ({"model1": ["MODEL"], "model2": ["MODEL"], **{k: RATIO for k in prefixes}}, ["MODEL"],
              "advanced/model_merging/model_specific", name, "comfy_extras.nodes_model_merging_model_specific", {})
       for name, prefixes in [
        *[(sd1, ["time_embed.", "label_emb."] + [f"input_blocks.{i}." for i in range(12)]
           + [f"middle_block.{i}." for i in range(3)] + [f"output_blocks.{i}." for i in range(12)] + ["out."])
          for sd1 in ("ModelMergeSD1", "ModelMergeSD2")],
        ("ModelMergeSDXL", ["time_embed.", "label_emb."] + [f"input_blocks.{i}" for i in range(9)]
         + [f"middle_block.{i}" for i in range(3)] + [f"output_blocks.{i}" for i in range(9)] + ["out."]),
        *[(name, ["pos_embed.", "x_embedder.", "context_embedder.", "y_embedder.", "t_embedder."]
           + [f"joint_blocks.{i}." for i in range(depth)] + ["final_layer."])
          for name, depth in (("ModelMergeSD3_2B", 24), ("ModelMergeSD35_Large", 38))],
        ("ModelMergeFlux1", ["img_in.", "time_in.", "guidance_in", "vector_in.", "txt_in."]
         + [f"double_blocks.{i}." for i in range(19)] + [f"single_blocks.{i}." for i in range(38)]
         + ["final_layer."]),
    ]},
    "CheckpointSave": ({"model": ["MODEL"], "clip": ["CLIP"], "vae": ["VAE"],
                        "filename_prefix": ["STRING", {"default": "checkpoints/ComfyUI"}]}, [],
                       "advanced/model_merging", "Save Checkpoint", "comfy_extras.nodes_model_merging",
                       {"output_node": True, "hidden": HIDDEN}),
    # today's comfy_extras/nodes_latent.py
    "LatentInterpolate": ({"samples1": LATENT, "samples2": LATENT, "ratio": f(1.0, 0.0, 1.0, 0.01)}, ["LATENT"],
                          "latent/advanced", "LatentInterpolate", "comfy_extras.nodes_latent", {}),
    "LatentConcat": ({"samples1": LATENT, "samples2": LATENT, "dim": [["x", "-x", "y", "-y", "t", "-t"]]}, ["LATENT"],
                     "latent/advanced", "LatentConcat", "comfy_extras.nodes_latent", {}),
    "LatentCutToBatch": ({"samples": LATENT, "dim": [["t", "x", "y"]], "slice_size": i(1, 1, MAX, 1)}, ["LATENT"],
                         "latent/advanced", "LatentCutToBatch", "comfy_extras.nodes_latent", {}),
    "LatentCut": ({"samples": LATENT, "dim": [["x", "y", "t"]], "index": i(0, -MAX, MAX, 1),
                   "amount": i(1, 1, MAX, 1)}, ["LATENT"], "latent/advanced", "LatentCut",
                  "comfy_extras.nodes_latent", {}),
    "LatentBatchSeedBehavior": ({"samples": LATENT, "seed_behavior": [["random", "fixed"], {"default": "fixed"}]},
                                ["LATENT"], "latent/advanced", "LatentBatchSeedBehavior", "comfy_extras.nodes_latent",
                                {}),
    "LatentApplyOperation": ({"samples": LATENT, "operation": ["LATENT_OPERATION"]}, ["LATENT"],
                             "latent/advanced/operations", "LatentApplyOperation", "comfy_extras.nodes_latent",
                             {"experimental": True}),
    "LatentApplyOperationCFG": ({"model": ["MODEL"], "operation": ["LATENT_OPERATION"]}, ["MODEL"],
                                "latent/advanced/operations", "LatentApplyOperationCFG", "comfy_extras.nodes_latent",
                                {"experimental": True}),
    "LatentOperationTonemapReinhard": ({"multiplier": f(1.0, 0.0, 100.0, 0.01)}, ["LATENT_OPERATION"],
                                       "latent/advanced/operations", "LatentOperationTonemapReinhard",
                                       "comfy_extras.nodes_latent", {"experimental": True}),
    "LatentOperationSharpen": ({"sharpen_radius": i(9, 1, 31, 1), "sigma": f(1.0, 0.1, 10.0, 0.1),
                                "alpha": f(0.1, 0.0, 5.0, 0.01)}, ["LATENT_OPERATION"], "latent/advanced/operations",
                               "LatentOperationSharpen", "comfy_extras.nodes_latent", {"experimental": True}),
    "LatentRotate": ({"samples": LATENT, "rotation": [["none", "90 degrees", "180 degrees", "270 degrees"]]},
                     ["LATENT"], "latent/transform", "Rotate Latent", "nodes", {}),
    "LatentFlip": ({"samples": LATENT, "flip_method": [["x-axis: vertically", "y-axis: horizontally"]]},
                   ["LATENT"], "latent/transform", "Flip Latent", "nodes", {}),
    "VAEDecodeTiled": ({"samples": LATENT, "vae": ["VAE"], "tile_size": i(512, 64, 4096, 32),
                        "overlap": i(64, 0, 4096, 32), **TEMPORAL("decode")}, ["IMAGE"], "_for_testing",
                       "VAE Decode (Tiled)", "nodes", {}),
    "VAEEncodeTiled": ({"pixels": IMAGE, "vae": ["VAE"], "tile_size": i(512, 64, 4096, 64),
                        "overlap": i(64, 0, 4096, 32), **TEMPORAL("encode")}, ["LATENT"], "_for_testing",
                       "VAE Encode (Tiled)", "nodes", {}),
    "LatentCrop": ({"samples": LATENT, "width": i(512, 64, step=8), "height": i(512, 64, step=8),
                    "x": i(0, 0, step=8), "y": i(0, 0, step=8)}, ["LATENT"], "latent/transform", "Crop Latent",
                   "nodes", {}),
    # mask
    "LoadImageMask": ({"image": [[], {"image_upload": True}], "channel": [["alpha", "red", "green", "blue"]]},
                      ["MASK"], "mask", "Load Image (as Mask)", "nodes", {}),
    "MaskToImage": ({"mask": MASK}, ["IMAGE"], "mask", "Convert Mask to Image", "comfy_extras.nodes_mask", {}),
    "ImageToMask": ({"image": IMAGE, "channel": [["red", "green", "blue", "alpha"]]}, ["MASK"], "mask",
                    "Convert Image to Mask", "comfy_extras.nodes_mask", {}),
    "SolidMask": ({"value": f(1.0, 0.0, 1.0, 0.01), "width": i(512, 1, step=1), "height": i(512, 1, step=1)},
                  ["MASK"], "mask", "SolidMask", "comfy_extras.nodes_mask", {}),
    "InpaintModelConditioning": ({"positive": COND, "negative": COND, "vae": ["VAE"], "pixels": IMAGE, "mask": MASK,
                                  "noise_mask": ["BOOLEAN", {"default": True, "tooltip": (
                                      "Add a noise mask to the latent so sampling will only happen within the mask. "
                                      "Might improve results or completely break things depending on the model.")}]},
                                 ["CONDITIONING", "CONDITIONING", "LATENT"], "conditioning/inpaint",
                                 "InpaintModelConditioning", "nodes",
                                 {"output_name": ["positive", "negative", "latent"]}),
    "ThresholdMask": ({"mask": MASK, "value": f(0.5, 0.0, 1.0, 0.01)}, ["MASK"], "mask", "ThresholdMask",
                      "comfy_extras.nodes_mask", {}),
    "EmptyImage": ({"width": i(512, 1, step=1), "height": i(512, 1, step=1), "batch_size": i(1, 1, 4096),
                    "color": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}]},
                   ["IMAGE"], "image", "EmptyImage", "nodes", {}),
    "GetImageSize": ({"image": IMAGE}, ["INT", "INT", "INT"], "image", "Get Image Size", "comfy_extras.nodes_images",
                     {"output_name": ["width", "height", "batch_size"], "hidden": {"unique_id": "UNIQUE_ID"},
                      "description": "Returns the width, height, and batch size of the image."}),
    "InvertMask": ({"mask": MASK}, ["MASK"], "mask", "InvertMask", "comfy_extras.nodes_mask", {}),
    "CropMask": ({"mask": MASK, "x": i(0, 0, step=1), "y": i(0, 0, step=1), "width": i(512, 1, step=1),
                  "height": i(512, 1, step=1)}, ["MASK"], "mask", "CropMask", "comfy_extras.nodes_mask", {}),
    "MaskComposite": ({"destination": MASK, "source": MASK, "x": i(0, 0, step=1), "y": i(0, 0, step=1),
                       "operation": [["multiply", "add", "subtract", "and", "or", "xor"]]}, ["MASK"], "mask",
                      "MaskComposite", "comfy_extras.nodes_mask", {}),
    "FeatherMask": ({"mask": MASK, "left": i(0, 0, step=1), "top": i(0, 0, step=1), "right": i(0, 0, step=1),
                     "bottom": i(0, 0, step=1)}, ["MASK"], "mask", "FeatherMask", "comfy_extras.nodes_mask", {}),
    "GrowMask": ({"mask": MASK, "expand": i(0, -MAX, step=1), "tapered_corners": ["BOOLEAN", {"default": True}]},
                 ["MASK"], "mask", "GrowMask", "comfy_extras.nodes_mask", {}),
    "ImageCompositeMasked": ({"destination": IMAGE, "source": IMAGE, "x": i(0, 0, step=1), "y": i(0, 0, step=1),
                              "resize_source": ["BOOLEAN", {"default": False}]}, ["IMAGE"], "image",
                             "ImageCompositeMasked", "comfy_extras.nodes_mask", {"optional": {"mask": MASK}}),
    # image
    "ImageScaleBy": ({"image": IMAGE, "upscale_method": [UPSCALE], "scale_by": f(1.0, 0.01, 8.0, 0.01)},
                     ["IMAGE"], "image/upscaling", "Upscale Image By", "nodes", {}),
    "ImageScaleToTotalPixels": ({"image": IMAGE, "upscale_method": [UPSCALE], "megapixels": f(1.0, 0.01, 16.0, 0.01)},
                                ["IMAGE"], "image/upscaling", "ImageScaleToTotalPixels",
                                "comfy_extras.nodes_post_processing", {}),
    "ImageInvert": ({"image": IMAGE}, ["IMAGE"], "image", "Invert Image", "nodes", {}),
    "ImageBatch": ({"image1": IMAGE, "image2": IMAGE}, ["IMAGE"], "image", "Batch Images", "nodes", {}),
    "ImageCrop": ({"image": IMAGE, "width": i(512, 1, step=1), "height": i(512, 1, step=1), "x": i(0, 0, step=1),
                   "y": i(0, 0, step=1)}, ["IMAGE"], "image/transform", "ImageCrop", "comfy_extras.nodes_images", {}),
    # today's comfy_extras/nodes_images.py (V3 schema; inputs in the V1 form used throughout here)
    "RepeatImageBatch": ({"image": IMAGE, "amount": i(1, 1, 4096)}, ["IMAGE"], "image/batch", "Repeat Image Batch",
                         IMAGES, {}),
    "ImageFromBatch": ({"image": IMAGE, "batch_index": i(0, -MAX), "length": i(1, 1, 4096)}, ["IMAGE"],
                       "image/batch", "Get Image from Batch", IMAGES, {}),
    "ImageRotate": ({"image": IMAGE, "rotation": [["none", "90 degrees", "180 degrees", "270 degrees"]]}, ["IMAGE"],
                    "image/transform", "Rotate Image", IMAGES, {}),
    "ImageFlip": ({"image": IMAGE, "flip_method": [["x-axis: vertically", "y-axis: horizontally"]]}, ["IMAGE"],
                  "image/transform", "Flip Image", IMAGES, {}),
    "ImageStitch": ({"image1": IMAGE, "direction": [["right", "down", "left", "up"], {"default": "right"}],
                     "match_image_size": ["BOOLEAN", {"default": True}],
                     "spacing_width": ["INT", {"default": 0, "min": 0, "max": 1024, "step": 2, "advanced": True}],
                     "spacing_color": [["white", "black", "red", "green", "blue"],
                                       {"default": "white", "advanced": True}]},
                    ["IMAGE"], "image/transform", "Stitch Images", IMAGES,
                    {"optional": {"image2": IMAGE}, "description": (
                        "Stitches image2 to image1 in the specified direction.\nIf image2 is not provided, returns "
                        "image1 unchanged.\nOptional spacing can be added between images.")}),
    "ImageAddNoise": ({"image": IMAGE,
                       "seed": ["INT", {**SEED[1], "tooltip": "The random seed used for creating the noise."}],
                       "strength": f(0.5, 0.0, 1.0, 0.01)}, ["IMAGE"], "image/filters", "Add Noise to Image",
                      IMAGES, {}),
    "ResizeAndPadImage": ({"image": IMAGE, "target_width": i(512, 1, step=1), "target_height": i(512, 1, step=1),
                           "padding_color": [["white", "black"], {"advanced": True}],
                           "interpolation": [["area", "bicubic", "nearest-exact", "bilinear", "lanczos"],
                                             {"advanced": True}]},
                          ["IMAGE"], "image/transform", "Resize And Pad Image", IMAGES, {}),
    "ImageScaleToMaxDimension": ({"image": IMAGE,
                                  "upscale_method": [["area", "lanczos", "bilinear", "nearest-exact", "bilinear",
                                                      "bicubic"]], "largest_size": i(512, 0, step=1)},
                                 ["IMAGE"], "image/upscaling", "Scale Image to Max Dimension", IMAGES, {}),
    "Canny": ({"image": IMAGE, "low_threshold": f(0.4, 0.01, 0.99, 0.01), "high_threshold": f(0.8, 0.01, 0.99, 0.01)},
              ["IMAGE"], "image/preprocessors", "Canny", "comfy_extras.nodes_canny", {}),
    "Morphology": ({"image": IMAGE, "operation": [["erode", "dilate", "open", "close", "gradient", "bottom_hat",
                                                   "top_hat"]], "kernel_size": i(3, 3, 999, 1)}, ["IMAGE"],
                   "image/postprocessing", "ImageMorphology", "comfy_extras.nodes_morphology", {}),
    "ImageRGBToYUV": ({"image": IMAGE}, ["IMAGE", "IMAGE", "IMAGE"], "image/batch", "ImageRGBToYUV",
                      "comfy_extras.nodes_morphology", {"output_name": ["Y", "U", "V"]}),
    "ImageYUVToRGB": ({"Y": IMAGE, "U": IMAGE, "V": IMAGE}, ["IMAGE"], "image/batch", "ImageYUVToRGB",
                      "comfy_extras.nodes_morphology", {}),
    "ImageQuantize": ({"image": IMAGE, "colors": i(256, 1, 256, 1),
                       "dither": [["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]]},
                      ["IMAGE"], "image/postprocessing", "ImageQuantize", "comfy_extras.nodes_post_processing", {}),
    "ImageColorToMask": ({"image": IMAGE, "color": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1,
                                                           "display": "number"}]},
                         ["MASK"], "mask", "ImageColorToMask", "comfy_extras.nodes_mask", {}),
    "PorterDuffImageComposite": ({"source": IMAGE, "source_alpha": MASK, "destination": IMAGE,
                                  "destination_alpha": MASK,
                                  "mode": [["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT",
                                            "DST_OVER", "LIGHTEN", "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP",
                                            "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"], {"default": "DST"}]},
                                 ["IMAGE", "MASK"], "mask/compositing", "Porter-Duff Image Composite",
                                 "comfy_extras.nodes_compositing", {}),
    "SplitImageWithAlpha": ({"image": IMAGE}, ["IMAGE", "MASK"], "mask/compositing", "Split Image with Alpha",
                            "comfy_extras.nodes_compositing", {}),
    "JoinImageWithAlpha": ({"image": IMAGE, "alpha": MASK}, ["IMAGE"], "mask/compositing", "Join Image with Alpha",
                           "comfy_extras.nodes_compositing", {}),
    "ImageBlend": ({"image1": IMAGE, "image2": IMAGE, "blend_factor": f(0.5, 0.0, 1.0, 0.01),
                    "blend_mode": [["normal", "multiply", "screen", "overlay", "soft_light", "difference"]]},
                   ["IMAGE"], "image/postprocessing", "ImageBlend", "comfy_extras.nodes_post_processing", {}),
    "ImageBlur": ({"image": IMAGE, "blur_radius": i(1, 1, 31, 1), "sigma": f(1.0, 0.1, 10.0, 0.1)}, ["IMAGE"],
                  "image/postprocessing", "ImageBlur", "comfy_extras.nodes_post_processing", {}),
    "ImageSharpen": ({"image": IMAGE, "sharpen_radius": i(1, 1, 31, 1), "sigma": f(1.0, 0.1, 10.0, 0.01),
                      "alpha": f(1.0, 0.0, 5.0, 0.01)}, ["IMAGE"], "image/postprocessing", "ImageSharpen",
                     "comfy_extras.nodes_post_processing", {}),
    "SaveImageWebsocket": ({"images": IMAGE}, [], "api/image", "SaveImageWebsocket",
                           "custom_nodes.websocket_image_save", {"output_node": True}),
    "SaveAnimatedWEBP": ({"images": IMAGE, "filename_prefix": ["STRING", {"default": "ComfyUI"}],
                          "fps": f(6.0, 0.01, 1000.0, 0.01), "lossless": ["BOOLEAN", {"default": True}],
                          "quality": i(80, 0, 100), "method": [["default", "fastest", "slowest"]]}, [],
                         "image/animation", "SaveAnimatedWEBP", "comfy_extras.nodes_images",
                         {"output_node": True, "hidden": HIDDEN}),
    "SaveAnimatedPNG": ({"images": IMAGE, "filename_prefix": ["STRING", {"default": "ComfyUI"}],
                         "fps": f(6.0, 0.01, 1000.0, 0.01), "compress_level": i(4, 0, 9)}, [], "image/animation",
                        "SaveAnimatedPNG", "comfy_extras.nodes_images", {"output_node": True, "hidden": HIDDEN}),
    "MaskPreview": ({"mask": MASK}, [], "mask", "Preview Mask", "comfy_extras.nodes_mask",
                    {"output_node": True, "hidden": HIDDEN,
                     "description": "Saves the input images to your ComfyUI output directory."}),
    # conditioning
    "ConditioningCombine": ({"conditioning_1": COND, "conditioning_2": COND}, ["CONDITIONING"], "conditioning",
                            "Conditioning (Combine)", "nodes", {}),
    "ConditioningAverage": ({"conditioning_to": COND, "conditioning_from": COND,
                             "conditioning_to_strength": f(1.0, 0.0, 1.0, 0.01)}, ["CONDITIONING"], "conditioning",
                            "ConditioningAverage", "nodes", {}),
    "ConditioningConcat": ({"conditioning_to": COND, "conditioning_from": COND}, ["CONDITIONING"], "conditioning",
                           "Conditioning (Concat)", "nodes", {}),
    "ConditioningSetArea": ({"conditioning": COND, "width": i(64, 64, step=8), "height": i(64, 64, step=8),
                             "x": i(0, 0, step=8), "y": i(0, 0, step=8), "strength": f(1.0, 0.0, 10.0, 0.01)},
                            ["CONDITIONING"], "conditioning", "Conditioning (Set Area)", "nodes", {}),
    "ConditioningSetAreaPercentage": ({"conditioning": COND, "width": f(1.0, 0, 1.0, 0.01),
                                       "height": f(1.0, 0, 1.0, 0.01), "x": f(0, 0, 1.0, 0.01),
                                       "y": f(0, 0, 1.0, 0.01), "strength": f(1.0, 0.0, 10.0, 0.01)},
                                      ["CONDITIONING"], "conditioning", "Conditioning (Set Area with Percentage)",
                                      "nodes", {}),
    "ConditioningSetAreaStrength": ({"conditioning": COND, "strength": f(1.0, 0.0, 10.0, 0.01)}, ["CONDITIONING"],
                                    "conditioning", "ConditioningSetAreaStrength", "nodes", {}),
    "ConditioningSetMask": ({"conditioning": COND, "mask": MASK, "strength": f(1.0, 0.0, 10.0, 0.01),
                             "set_cond_area": [["default", "mask bounds"]]}, ["CONDITIONING"], "conditioning",
                            "Conditioning (Set Mask)", "nodes", {}),
    "ConditioningZeroOut": ({"conditioning": COND}, ["CONDITIONING"], "advanced/conditioning", "ConditioningZeroOut",
                            "nodes", {}),
    "ConditioningSetTimestepRange": ({"conditioning": COND, "start": f(0.0, 0.0, 1.0, 0.001),
                                      "end": f(1.0, 0.0, 1.0, 0.001)}, ["CONDITIONING"], "advanced/conditioning",
                                     "ConditioningSetTimestepRange", "nodes", {}),
    "CLIPTextEncodeSDXL": ({"clip": ["CLIP"], "width": i(1024, 0), "height": i(1024, 0), "crop_w": i(0, 0),
                            "crop_h": i(0, 0), "target_width": i(1024, 0), "target_height": i(1024, 0),
                            "text_g": TEXT, "text_l": TEXT}, ["CONDITIONING"], "advanced/conditioning",
                           "CLIPTextEncodeSDXL", "comfy_extras.nodes_clip_sdxl", {}),
    "CLIPTextEncodeSDXLRefiner": ({"ascore": f(6.0, 0.0, 1000.0, 0.01), "width": i(1024, 0), "height": i(1024, 0),
                                   "text": TEXT, "clip": ["CLIP"]}, ["CONDITIONING"], "advanced/conditioning",
                                  "CLIPTextEncodeSDXLRefiner", "comfy_extras.nodes_clip_sdxl", {}),
    # custom sampling
    "KSamplerSelect": ({"sampler_name": [SAMPLERS]}, ["SAMPLER"], "sampling/custom_sampling/samplers",
                       "KSamplerSelect", "comfy_extras.nodes_custom_sampler", {}),
    "BasicScheduler": ({"model": ["MODEL"], "scheduler": [SCHEDULERS], "steps": STEPS, "denoise": DENOISE},
                       ["SIGMAS"], "sampling/custom_sampling/schedulers", "BasicScheduler",
                       "comfy_extras.nodes_custom_sampler", {}),
    "KarrasScheduler": ({"steps": STEPS, "sigma_max": sigma(14.614642), "sigma_min": sigma(0.0291675),
                         "rho": f(7.0, 0.0, 100.0, 0.01, round=False)}, ["SIGMAS"],
                        "sampling/custom_sampling/schedulers", "KarrasScheduler", "comfy_extras.nodes_custom_sampler", {}),
    "ExponentialScheduler": ({"steps": STEPS, "sigma_max": sigma(14.614642), "sigma_min": sigma(0.0291675)},
                             ["SIGMAS"], "sampling/custom_sampling/schedulers", "ExponentialScheduler",
                             "comfy_extras.nodes_custom_sampler", {}),
    "SDTurboScheduler": ({"model": ["MODEL"], "steps": i(1, 1, 10), "denoise": f(1.0, 0, 1.0, 0.01)}, ["SIGMAS"],
                         "sampling/custom_sampling/schedulers", "SDTurboScheduler",
                         "comfy_extras.nodes_custom_sampler", {}),
    "GITSScheduler": ({"coeff": f(1.2, 0.8, 1.5, 0.05), "steps": i(10, 2, 1000), "denoise": DENOISE}, ["SIGMAS"],
                      "sampling/custom_sampling/schedulers", "GITSScheduler", "comfy_extras.nodes_gits", {}),
    "AlignYourStepsScheduler": ({"model_type": [["SD1", "SDXL", "SVD"]], "steps": i(10, 1, 10000),
                                 "denoise": DENOISE}, ["SIGMAS"], "sampling/custom_sampling/schedulers",
                                "AlignYourStepsScheduler", "comfy_extras.nodes_align_your_steps", {}),
    "BetaSamplingScheduler": ({"model": ["MODEL"], "steps": STEPS, "alpha": f(0.6, 0.0, 50.0, 0.01, round=False),
                               "beta": f(0.6, 0.0, 50.0, 0.01, round=False)},
                              ["SIGMAS"], "sampling/custom_sampling/schedulers", "BetaSamplingScheduler", CUSTOM, {}),
    "PolyexponentialScheduler": ({"steps": STEPS, "sigma_max": sigma(14.614642), "sigma_min": sigma(0.0291675),
                                  "rho": f(1.0, 0.0, 100.0, 0.01, round=False)}, ["SIGMAS"],
                                 "sampling/custom_sampling/schedulers", "PolyexponentialScheduler", CUSTOM, {}),
    "LaplaceScheduler": ({"steps": STEPS, "sigma_max": sigma(14.614642), "sigma_min": sigma(0.0291675),
                          "mu": f(0.0, -10.0, 10.0, 0.1, round=False), "beta": f(0.5, 0.0, 10.0, 0.1, round=False)},
                         ["SIGMAS"], "sampling/custom_sampling/schedulers", "LaplaceScheduler", CUSTOM, {}),
    "VPScheduler": ({"steps": STEPS, "beta_d": f(19.9, 0.0, 5000.0, 0.01, round=False),
                     "beta_min": f(0.1, 0.0, 5000.0, 0.01, round=False),
                     "eps_s": f(0.001, 0.0, 1.0, 0.0001, round=False)},
                    ["SIGMAS"], "sampling/custom_sampling/schedulers", "VPScheduler", CUSTOM, {}),
    "SplitSigmas": ({"sigmas": ["SIGMAS"], "step": i(0, 0, 10000)}, ["SIGMAS", "SIGMAS"],
                    "sampling/custom_sampling/sigmas", "SplitSigmas", "comfy_extras.nodes_custom_sampler",
                    {"output_name": ["high_sigmas", "low_sigmas"]}),
    "FlipSigmas": ({"sigmas": ["SIGMAS"]}, ["SIGMAS"], "sampling/custom_sampling/sigmas", "FlipSigmas",
                   "comfy_extras.nodes_custom_sampler", {}),
    "OptimalStepsScheduler": ({"model_type": [["FLUX", "Wan", "Chroma"]], "steps": i(20, 3, 1000),
                               "denoise": f(1.0, 0.0, 1.0, 0.01)}, ["SIGMAS"], "sampling/custom_sampling/schedulers",
                              "OptimalStepsScheduler", "comfy_extras.nodes_optimalsteps", {}),
    "SplitSigmasDenoise": ({"sigmas": ["SIGMAS"], "denoise": f(1.0, 0.0, 1.0, 0.01)}, ["SIGMAS", "SIGMAS"],
                           "sampling/custom_sampling/sigmas", "SplitSigmasDenoise", CUSTOM,
                           {"output_name": ["high_sigmas", "low_sigmas"]}),
    "SetFirstSigma": ({"sigmas": ["SIGMAS"], "sigma": f(136.0, 0.0, 20000.0, 0.001, round=False)}, ["SIGMAS"],
                      "sampling/custom_sampling/sigmas", "SetFirstSigma", CUSTOM, {}),
    "ExtendIntermediateSigmas": ({"sigmas": ["SIGMAS"], "steps": i(2, 1, 100),
                                  "start_at_sigma": f(-1.0, -1.0, 20000.0, 0.01, round=False),
                                  "end_at_sigma": f(12.0, 0.0, 20000.0, 0.01, round=False),
                                  "spacing": [["linear", "cosine", "sine"]]}, ["SIGMAS"],
                                 "sampling/custom_sampling/sigmas", "ExtendIntermediateSigmas", CUSTOM, {}),
    "SamplingPercentToSigma": ({"model": ["MODEL"], "sampling_percent": f(0.0, 0.0, 1.0, 0.0001),
                                "return_actual_sigma": ["BOOLEAN", {"default": False, "tooltip": (
                                    "Return the actual sigma value instead of the value used for interval checks.\n"
                                    "This only affects results at 0.0 and 1.0.")}]}, ["FLOAT"],
                               "sampling/custom_sampling/sigmas", "SamplingPercentToSigma", CUSTOM,
                               {"output_name": ["sigma_value"]}),
    "AddNoise": ({"model": ["MODEL"], "noise": ["NOISE"], "sigmas": ["SIGMAS"], "latent_image": LATENT}, LATENT,
                 "_for_testing/custom_sampling/noise", "AddNoise", CUSTOM, {"experimental": True}),
    "RandomNoise": ({"noise_seed": SEED}, ["NOISE"], "sampling/custom_sampling/noise", "RandomNoise",
                    "comfy_extras.nodes_custom_sampler", {}),
    "DisableNoise": ({}, ["NOISE"], "sampling/custom_sampling/noise", "DisableNoise",
                     "comfy_extras.nodes_custom_sampler", {}),
    "CFGGuider": ({"model": ["MODEL"], "positive": COND, "negative": COND, "cfg": CFG}, ["GUIDER"],
                  "sampling/custom_sampling/guiders", "CFGGuider", "comfy_extras.nodes_custom_sampler", {}),
    "BasicGuider": ({"model": ["MODEL"], "conditioning": COND}, ["GUIDER"], "sampling/custom_sampling/guiders",
                    "BasicGuider", "comfy_extras.nodes_custom_sampler", {}),
    "DualCFGGuider": ({"model": ["MODEL"], "cond1": COND, "cond2": COND, "negative": COND, "cfg_conds": CFG,
                       "cfg_cond2_negative": CFG}, ["GUIDER"], "sampling/custom_sampling/guiders", "DualCFGGuider",
                      "comfy_extras.nodes_custom_sampler", {}),
    "SamplerCustom": ({"model": ["MODEL"], "add_noise": ["BOOLEAN", {"default": True}], "noise_seed": SEED,
                       "cfg": CFG, "positive": COND, "negative": COND, "sampler": ["SAMPLER"], "sigmas": ["SIGMAS"],
                       "latent_image": LATENT}, ["LATENT", "LATENT"], "sampling/custom_sampling", "SamplerCustom",
                      "comfy_extras.nodes_custom_sampler", {"output_name": ["output", "denoised_output"]}),
    "SamplerCustomAdvanced": ({"noise": ["NOISE"], "guider": ["GUIDER"], "sampler": ["SAMPLER"],
                               "sigmas": ["SIGMAS"], "latent_image": LATENT}, ["LATENT", "LATENT"],
                              "sampling/custom_sampling", "SamplerCustomAdvanced", "comfy_extras.nodes_custom_sampler",
                              {"output_name": ["output", "denoised_output"]}),
    # sampler options
    **{name: (inputs, ["SAMPLER"], "sampling/custom_sampling/samplers", display, module, {})
       for name, inputs, display, module in [
        ("SamplerEulerAncestral", {"eta": opt(1.0), "s_noise": opt(1.0)}, "SamplerEulerAncestral", CUSTOM),
        ("SamplerEulerAncestralCFGPP", {"eta": opt(1.0, 1.0), "s_noise": opt(1.0, 10.0)},
         "SamplerEulerAncestralCFG++", CUSTOM),
        ("SamplerLMS", {"order": i(4, 1, 100)}, "SamplerLMS", CUSTOM),
        ("SamplerDPMPP_3M_SDE", {"eta": opt(1.0), "s_noise": opt(1.0), "noise_device": [["gpu", "cpu"]]},
         "SamplerDPMPP_3M_SDE", CUSTOM),
        ("SamplerDPMPP_2M_SDE", {"solver_type": [["midpoint", "heun"]], "eta": opt(1.0), "s_noise": opt(1.0),
                                 "noise_device": [["gpu", "cpu"]]}, "SamplerDPMPP_2M_SDE", CUSTOM),
        ("SamplerDPMPP_SDE", {"eta": opt(1.0), "s_noise": opt(1.0), "r": opt(0.5), "noise_device": [["gpu", "cpu"]]},
         "SamplerDPMPP_SDE", CUSTOM),
        ("SamplerDPMPP_2S_Ancestral", {"eta": opt(1.0), "s_noise": opt(1.0)}, "SamplerDPMPP_2S_Ancestral", CUSTOM),
        ("SamplerDPMAdaptative", {"order": i(3, 2, 3), "rtol": opt(0.05), "atol": opt(0.0078), "h_init": opt(0.05),
                                  "pcoeff": opt(0.0), "icoeff": opt(1.0), "dcoeff": opt(0.0),
                                  "accept_safety": opt(0.81), "eta": opt(0.0), "s_noise": opt(1.0)},
         "SamplerDPMAdaptative", CUSTOM),
        ("SamplerLCMUpscale", {"scale_ratio": f(1.0, 0.1, 20.0, 0.01), "scale_steps": i(-1, -1, 1000, 1),
                               "upscale_method": [["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]]},
         "SamplerLCMUpscale", "comfy_extras.nodes_advanced_samplers"),
        # not a core node: the comfyui-tcd-scheduler pack's
        ("SamplerTCD", {"eta": ["FLOAT", {"default": 0.3, "min": 0, "max": 1.0, "step": 0.01, "round": False}]},
         "SamplerTCD", "custom_nodes.comfyui-tcd-scheduler"),
    ]},
    # model patches
    "ModelSamplingDiscrete": ({"model": ["MODEL"], "sampling": [["eps", "v_prediction", "lcm", "x0"]],
                               "zsnr": ["BOOLEAN", {"default": False}]}, ["MODEL"], "advanced/model",
                              "ModelSamplingDiscrete", "comfy_extras.nodes_model_advanced", {}),
    "ModelSamplingContinuousEDM": ({"model": ["MODEL"], "sampling": [["v_prediction", "edm_playground_v2.5", "eps"]],
                                    "sigma_max": f(120.0, 0.0, 1000.0, 0.001, round=False),
                                    "sigma_min": f(0.002, 0.0, 1000.0, 0.001, round=False)}, ["MODEL"],
                                   "advanced/model", "ModelSamplingContinuousEDM", "comfy_extras.nodes_model_advanced",
                                   {}),
    "ModelSamplingContinuousV": ({"model": ["MODEL"], "sampling": [["v_prediction"]],
                                  "sigma_max": f(500.0, 0.0, 1000.0, 0.001, round=False),
                                  "sigma_min": f(0.03, 0.0, 1000.0, 0.001, round=False)}, ["MODEL"],
                                 "advanced/model", "ModelSamplingContinuousV", "comfy_extras.nodes_model_advanced", {}),
    "RescaleCFG": ({"model": ["MODEL"], "multiplier": f(0.7, 0.0, 1.0, 0.01)}, ["MODEL"], "advanced/model",
                   "RescaleCFG", "comfy_extras.nodes_model_advanced", {}),
    # today's comfy_extras/nodes_freelunch.py (V3 schema: factors advanced, category model_patches/unet)
    **{name: ({"model": ["MODEL"], **{k: f(v, 0.0, 10.0, 0.01, advanced=True)
                                      for k, v in zip(("b1", "b2", "s1", "s2"), factors)}},
              ["MODEL"], "model_patches/unet", name, "comfy_extras.nodes_freelunch", {})
       for name, factors in (("FreeU", (1.1, 1.2, 0.9, 0.2)), ("FreeU_V2", (1.3, 1.4, 0.9, 0.2)))},
    "HyperTile": ({"model": ["MODEL"], "tile_size": i(256, 1, 2048), "swap_size": i(2, 1, 128),
                   "max_depth": i(0, 0, 10), "scale_depth": ["BOOLEAN", {"default": False}]}, ["MODEL"],
                  "model_patches/unet", "HyperTile", "comfy_extras.nodes_hypertile", {}),
    "SelfAttentionGuidance": ({"model": ["MODEL"], "scale": f(0.5, -2.0, 5.0, 0.01),
                               "blur_sigma": f(2.0, 0.0, 10.0, 0.1)}, ["MODEL"], "_for_testing",
                              "Self-Attention Guidance", "comfy_extras.nodes_sag",
                              {"experimental": True}),
    **{name: ({"model": ["MODEL"], **{k: f(1.0, 0.0, 10.0, 0.01) for k in ("q", "k", "v", "out")}}, ["MODEL"],
              "_for_testing/attention_experiments", name, "comfy_extras.nodes_attention_multiply",
              {"experimental": True})
       for name in ("UNetSelfAttentionMultiply", "UNetCrossAttentionMultiply")},
    "APG": ({"model": ["MODEL"],
             "eta": f(1.0, -10.0, 10.0, 0.01, tooltip="Controls the scale of the parallel guidance vector. Default CFG "
                    "behavior at a setting of 1."),
             "norm_threshold": f(5.0, 0.0, 50.0, 0.1, tooltip="Normalize guidance vector to this value, normalization "
                                 "disable at a setting of 0."),
             "momentum": f(0.0, 0.0, 1.0, 0.01, tooltip="Controls a running average of guidance during diffusion, "
                           "disabled at a setting of 0.")},
            ["MODEL"], "sampling/custom_sampling", "Adaptive Projected Guidance", "comfy_extras.nodes_apg", {}),
    "TCFG": ({"model": ["MODEL"]}, ["MODEL"], "advanced/guidance", "Tangential Damping CFG", "comfy_extras.nodes_tcfg",
             {"output_name": ["patched_model"], "description": "TCFG \u2013 Tangential Damping CFG (2503.18137)\n\n"
              "Refine the uncond (negative) to align with the cond (positive) for improving quality."}),
    "FreSca": ({"model": ["MODEL"],
                "scale_low": ["FLOAT", {"default": 1.0, "min": 0, "max": 10, "step": 0.01,
                                        "tooltip": "Scaling factor for low-frequency components"}],
                "scale_high": ["FLOAT", {"default": 1.25, "min": 0, "max": 10, "step": 0.01,
                                         "tooltip": "Scaling factor for high-frequency components"}],
                "freq_cutoff": ["INT", {"default": 20, "min": 1, "max": 100, "step": 1, "tooltip":
                                        "Number of frequency indices around center to consider as low-frequency"}]},
               ["MODEL"], "_for_testing", "FreSca", "comfy_extras.nodes_fresca",
               {"description": "Applies frequency-dependent scaling to the guidance"}),
    "Mahiro": ({"model": ["MODEL"]}, ["MODEL"], "_for_testing",
               "Mahiro is so cute that she deserves a better guidance function!! (\u3002\u30fb\u03c9\u30fb\u3002)",
               "comfy_extras.nodes_mahiro",
               {"output_name": ["patched_model"], "description": "Modify the guidance to scale more on the 'direction' "
                "of the positive prompt rather than the difference between the negative prompt."}),
    "DiffControlNetLoader": ({"model": ["MODEL"], "control_net_name": [[]]}, ["CONTROL_NET"], "loaders",
                             "Load ControlNet Model (diff)", "nodes", {}),
    "LoadImageOutput": ({"image": ["COMBO", {"image_upload": True, "image_folder": "output", "remote": {
        "route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"}}]},
                        ["IMAGE", "MASK"], "image", "Load Image (from Outputs)", "nodes",
                        {"experimental": True, "description": "Load an image from the output folder. When the refresh "
                         "button is clicked, the node will update the image list and automatically select the first "
                         "image, allowing for easy iteration."}),
    "CLIPAttentionMultiply": ({"clip": ["CLIP"], **{k: f(1.0, 0.0, 10.0, 0.01) for k in ("q", "k", "v", "out")}},
                              ["CLIP"], "_for_testing/attention_experiments", "CLIPAttentionMultiply",
                              "comfy_extras.nodes_attention_multiply", {"experimental": True}),
    "TomePatchModel": ({"model": ["MODEL"], "ratio": f(0.3, 0.0, 1.0, 0.01)}, ["MODEL"], "_for_testing",
                       "TomePatchModel", "comfy_extras.nodes_tomesd", {}),
    "DifferentialDiffusion": ({"model": ["MODEL"]}, ["MODEL"], "_for_testing", "Differential Diffusion",
                              "comfy_extras.nodes_differential_diffusion",
                              {"optional": {"strength": f(1.0, 0.0, 1.0, 0.01)}}),
    "PerpNeg": ({"model": ["MODEL"], "empty_conditioning": COND, "neg_scale": f(1.0, 0.0, 100.0, 0.01)}, ["MODEL"],
                "_for_testing", "Perp-Neg (DEPRECATED by PerpNegGuider)", "comfy_extras.nodes_perpneg", {}),
    "CFGZeroStar": ({"model": ["MODEL"]}, ["MODEL"], "advanced/guidance", "CFGZeroStar", "comfy_extras.nodes_cfg",
                    {"output_name": ["patched_model"]}),
    "CFGNorm": ({"model": ["MODEL"], "strength": f(1.0, 0.0, 100.0, 0.01)}, ["MODEL"], "advanced/guidance", "CFGNorm",
                "comfy_extras.nodes_cfg", {"output_name": ["patched_model"], "experimental": True}),
    "PerpNegGuider": ({"model": ["MODEL"], "positive": COND, "negative": COND, "empty_conditioning": COND,
                       "cfg": CFG, "neg_scale": f(1.0, 0.0, 100.0, 0.01)}, ["GUIDER"], "_for_testing",
                      "PerpNegGuider", "comfy_extras.nodes_perpneg", {"experimental": True}),
    "PerturbedAttentionGuidance": ({"model": ["MODEL"], "scale": f(3.0, 0.0, 100.0, 0.01, round=0.01)}, ["MODEL"],
                                   "model_patches/unet", "PerturbedAttentionGuidance", "comfy_extras.nodes_pag", {}),
    "PatchModelAddDownscale": ({"model": ["MODEL"], "block_number": i(3, 1, 32, 1),
                                "downscale_factor": f(2.0, 0.1, 9.0, 0.001), "start_percent": f(0.0, 0.0, 1.0, 0.001),
                                "end_percent": f(0.35, 0.0, 1.0, 0.001),
                                "downscale_after_skip": ["BOOLEAN", {"default": True}],
                                "downscale_method": [SHRINK], "upscale_method": [SHRINK]}, ["MODEL"],
                               "model_patches/unet", "PatchModelAddDownscale (Kohya Deep Shrink)",
                               "comfy_extras.nodes_model_downscale", {}),
    # loaders
    "VAELoader": ({"vae_name": [[]]}, ["VAE"], "loaders", "Load VAE", "nodes", {}),
    "CheckpointLoader": ({"config_name": [[]], "ckpt_name": [[]]}, ["MODEL", "CLIP", "VAE"], "advanced/loaders",
                         "Load Checkpoint With Config (DEPRECATED)", "nodes", {}),
    "UNETLoader": ({"unet_name": [[]], "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e5m2"]]}, ["MODEL"],
                   "advanced/loaders", "Load Diffusion Model", "nodes", {}),
    "CLIPLoader": ({"clip_name": [[]], "type": [["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "chroma",
                                                 "lumina2", "flux2", "qwen_image"]]},
                   ["CLIP"], "advanced/loaders", "Load CLIP", "nodes", {}),
    "DualCLIPLoader": ({"clip_name1": [[]], "clip_name2": [[]], "type": [["sdxl", "sd3", "flux"]]}, ["CLIP"],
                       "advanced/loaders", "DualCLIPLoader", "nodes", {}),
    "LoraLoaderModelOnly": ({"model": ["MODEL"], "lora_name": [[]], "strength_model": f(1.0, -100.0, 100.0, 0.01)},
                            ["MODEL"], "loaders", "LoraLoaderModelOnly", "nodes", {}),
    # SD3 and Flux (issue 23): comfy_extras/nodes_sd3.py, nodes_flux.py, nodes_model_advanced.py
    "TripleCLIPLoader": ({"clip_name1": [[]], "clip_name2": [[]], "clip_name3": [[]]}, ["CLIP"], "advanced/loaders",
                         "TripleCLIPLoader", "comfy_extras.nodes_sd3", {}),
    "EmptySD3LatentImage": ({"width": i(1024, 16, step=16), "height": i(1024, 16, step=16),
                             "batch_size": i(1, 1, 4096)}, ["LATENT"], "latent/sd3", "EmptySD3LatentImage",
                            "comfy_extras.nodes_sd3", {}),
    "CLIPTextEncodeSD3": ({"clip": ["CLIP"], "clip_l": TEXT, "clip_g": TEXT, "t5xxl": TEXT,
                           "empty_padding": [["none", "empty_prompt"]]}, COND, "advanced/conditioning",
                          "CLIPTextEncodeSD3", "comfy_extras.nodes_sd3", {}),
    "CLIPTextEncodeFlux": ({"clip": ["CLIP"], "clip_l": TEXT, "t5xxl": TEXT, "guidance": f(3.5, 0.0, 100.0, 0.1)},
                           COND, "advanced/conditioning/flux", "CLIPTextEncodeFlux", "comfy_extras.nodes_flux", {}),
    "EmptyFlux2LatentImage": ({"width": i(1024, 16, step=16), "height": i(1024, 16, step=16),
                               "batch_size": i(1, 1, 4096)}, ["LATENT"], "latent", "Empty Flux 2 Latent",
                              "comfy_extras.nodes_flux", {}),
    "Flux2Scheduler": ({"steps": i(20, 1, 4096), "width": i(1024, 16, step=1), "height": i(1024, 16, step=1)},
                       ["SIGMAS"], "sampling/custom_sampling/schedulers", "Flux2Scheduler", "comfy_extras.nodes_flux", {}),
    "FluxGuidance": ({"conditioning": COND, "guidance": f(3.5, 0.0, 100.0, 0.1)}, COND, "advanced/conditioning/flux",
                     "FluxGuidance", "comfy_extras.nodes_flux", {}),
    "FluxDisableGuidance": ({"conditioning": COND}, COND, "advanced/conditioning/flux", "FluxDisableGuidance",
                            "comfy_extras.nodes_flux",
                            {"description": "This node completely disables the guidance embed on Flux and Flux like "
                                            "models"}),
    "ModelSamplingSD3": ({"model": ["MODEL"], "shift": f(3.0, 0.0, 100.0, 0.01)}, ["MODEL"], "advanced/model",
                         "ModelSamplingSD3", "comfy_extras.nodes_model_advanced", {}),
    "ModelSamplingAuraFlow": ({"model": ["MODEL"], "shift": f(1.73, 0.0, 100.0, 0.01)}, ["MODEL"], "advanced/model",
                              "ModelSamplingAuraFlow", "comfy_extras.nodes_model_advanced", {}),
    "ModelSamplingFlux": ({"model": ["MODEL"], "max_shift": f(1.15, 0.0, 100.0, 0.01),
                           "base_shift": f(0.5, 0.0, 100.0, 0.01), "width": i(1024, 16, step=8),
                           "height": i(1024, 16, step=8)}, ["MODEL"], "advanced/model", "ModelSamplingFlux",
                          "comfy_extras.nodes_model_advanced", {}),
    "SkipLayerGuidanceDiT": ({"model": ["MODEL"], "double_layers": LAYERS, "single_layers": LAYERS, **SLG,
                              "rescaling_scale": f(0.0, 0.0, 10.0, 0.01)}, ["MODEL"], "advanced/guidance",
                             "SkipLayerGuidanceDiT", "comfy_extras.nodes_slg",
                             {"experimental": True, "description": SLG_DESCRIPTION}),
    "SkipLayerGuidanceDiTSimple": ({"model": ["MODEL"], "double_layers": LAYERS, "single_layers": LAYERS,
                                    "start_percent": f(0.0, 0.0, 1.0, 0.001), "end_percent": f(1.0, 0.0, 1.0, 0.001)},
                                   ["MODEL"], "advanced/guidance", "SkipLayerGuidanceDiTSimple", "comfy_extras.nodes_slg",
                                   {"experimental": True, "description": "Simple version of the SkipLayerGuidanceDiT "
                                                                         "node that only modifies the uncond pass."}),
    "SkipLayerGuidanceSD3": ({"model": ["MODEL"], "layers": LAYERS, **SLG}, ["MODEL"], "advanced/guidance",
                             "SkipLayerGuidanceSD3", "comfy_extras.nodes_sd3",
                             {"experimental": True, "description": SLG_DESCRIPTION}),
    # comfy_extras/nodes_primitive.py
    **{name: ({"value": spec}, [spec[0]], "utils/primitive", display, "comfy_extras.nodes_primitive", {})
       for name, display, spec in (
           ("PrimitiveString", "String", ["STRING", {"multiline": False}]),
           ("PrimitiveStringMultiline", "String (Multiline)", ["STRING", {"multiline": True}]),
           ("PrimitiveInt", "Int", ["INT", {"min": -(2 ** 63 - 1), "max": 2 ** 63 - 1,
                                            "control_after_generate": True}]),
           ("PrimitiveFloat", "Float", ["FLOAT", {"min": -(2 ** 63 - 1), "max": 2 ** 63 - 1}]),
           ("PrimitiveBoolean", "Boolean", ["BOOLEAN"]))},
    # comfy_extras/nodes_preview_any.py
    "PreviewAny": ({"source": ["*"]}, ["STRING"], "utilities", "Preview as Text",
                   "comfy_extras.nodes_preview_any", {"output_node": True}),
    # comfy_extras/nodes_string.py (utils/string; its regular-expression nodes: test_workflows_object_info_core_nodes)
    **{name: (inputs, [out], "utils/string", display, "comfy_extras.nodes_string",
              {"output_name": [out_name]} if out_name else {})
       for name, display, inputs, out, out_name in (
           ("StringConcatenate", "Concatenate", {"string_a": TEXT_IN, "string_b": TEXT_IN,
                                                  "delimiter": ["STRING", {"default": "", "multiline": False}]},
            "STRING", None),
           ("StringSubstring", "Substring", {"string": TEXT_IN, "start": ["INT"], "end": ["INT"]}, "STRING", None),
           ("StringLength", "Length", {"string": TEXT_IN}, "INT", "length"),
           ("CaseConverter", "Case Converter",
            {"string": TEXT_IN, "mode": [["UPPERCASE", "lowercase", "Capitalize", "Title Case"]]}, "STRING", None),
           ("StringTrim", "Trim", {"string": TEXT_IN, "mode": [["Both", "Left", "Right"]]}, "STRING", None),
           ("StringReplace", "Replace", {"string": TEXT_IN, "find": TEXT_IN, "replace": TEXT_IN}, "STRING", None),
           ("StringContains", "Contains", {"string": TEXT_IN, "substring": TEXT_IN,
                                            "case_sensitive": ["BOOLEAN", {"default": True}]}, "BOOLEAN", "contains"),
           ("StringCompare", "Compare", {"string_a": TEXT_IN, "string_b": TEXT_IN,
                                          "mode": [["Starts With", "Ends With", "Equal"]],
                                          "case_sensitive": ["BOOLEAN", {"default": True}]}, "BOOLEAN", None))},
    # city96's ComfyUI-GGUF (nodes.py): the .gguf files of unet/ and diffusion_models/
    "UnetLoaderGGUF": ({"unet_name": [[]]}, ["MODEL"], "bootleg", "Unet Loader (GGUF)", "custom_nodes.ComfyUI-GGUF", {}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_object_info_matches_comfyui(name):
    check_object_info(name, EXPECTED[name])


def check_object_info(name, spec):
    """object_info(name) against `spec`, EXPECTED's (required, outputs, category, display, module, extra)."""
    required, outputs, category, display, module, extra = spec
    info = object_info(None, name)[name]
    inputs = {"required": required}
    order = {"required": list(required)}
    if "optional" in extra:
        inputs["optional"] = extra["optional"]
        order["optional"] = list(extra["optional"])
    if "hidden" in extra:
        inputs["hidden"] = extra["hidden"]
    want = {
        "input": inputs, "input_order": order, "output": outputs, "output_is_list": [False] * len(outputs),
        "output_name": extra.get("output_name", outputs), "name": name, "display_name": display,
        "description": extra.get("description", ""), "python_module": module, "category": category,
        "output_node": extra.get("output_node", False),
    }
    if extra.get("deprecated"):
        want["deprecated"] = True
    if extra.get("experimental"):
        want["experimental"] = True
    assert json.dumps(info) == json.dumps(want)  # exact, down to 0 vs 0.0 and key order


def test_latent_upscale_offers_bislerp_as_comfyui_does():
    methods = object_info(None, "LatentUpscale")["LatentUpscale"]["input"]["required"]["upscale_method"][0]
    assert methods == ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
