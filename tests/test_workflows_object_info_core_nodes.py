"""/object_info for the ComfyUI core nodes added with the comfynodes branch, against ComfyUI's own
definitions (its V3 schemas: input names in order, types, defaults, bounds, steps, tooltips, the
"advanced" and "display" flags; outputs, categories, display names and modules), transcribed here
as JSON and compared exactly by test_workflows_object_info.check_object_info."""
import pytest
from test_workflows_object_info import check_object_info


def f(default, lo, hi, step, **extra):
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


TSR_K = ("Controls the rescaling strength.\nLower k produces more detailed results; higher k produces smoother "
         "results in image generation. Setting k = 1 disables rescaling.")
TSR_SIGMA = "Controls how early rescaling takes effect.\nLarger values take effect earlier."

TEXT_IN = ["STRING", {"multiline": True}]
FLAGS = {"case_insensitive": ["BOOLEAN", {"default": True}], "multiline": ["BOOLEAN", {"default": False}],
         "dotall": ["BOOLEAN", {"default": False}]}
DOTALL_TIP = ("When enabled, the dot (.) character will match any character including newline characters. When "
              "disabled, dots won't match newlines.")
COUNT_TIP = ("Maximum number of replacements to make. Set to 0 to replace all occurrences (default). Set to 1 to "
             "replace only the first match, 2 for the first two matches, etc.")


BRANCH = ["COMFY_MATCHTYPE_V3", {"lazy": True, "template": {"template_id": "switch", "allowed_types": "*"}}]


BYPASS = ("Apply LoRA in bypass mode. Unlike regular LoRA, this doesn't modify model weights - instead it injects "
          "the LoRA computation during forward pass. Useful for training scenarios.")


def tip_int(default, lo, hi, tooltip, **extra):
    return ["INT", {"default": default, "min": lo, "max": hi, "tooltip": tooltip, **extra}]


def line(tooltip):
    return ["STRING", {"default": "", "multiline": False, "tooltip": tooltip}]


# name: (required, outputs, category, display name, python module, extra fields)
EXPECTED = {
    # comfy_extras/nodes_eps.py
    "Epsilon Scaling": ({"model": ["MODEL"],
                         "scaling_factor": f(1.005, 0.5, 1.5, 0.001, display="number", advanced=True)},
                        ["MODEL"], "model/patch/unet", "Epsilon Scaling", "comfy_extras.nodes_eps", {}),
    "TemporalScoreRescaling": (
        {"model": ["MODEL"], "tsr_k": f(0.95, 0.01, 100.0, 0.001, display="number", tooltip=TSR_K, advanced=True),
         "tsr_sigma": f(1.0, 0.01, 100.0, 0.001, display="number", tooltip=TSR_SIGMA, advanced=True)},
        ["MODEL"], "model/patch/unet", "TSR - Temporal Score Rescaling", "comfy_extras.nodes_eps",
        {"output_name": ["patched_model"], "description": "[Post-CFG Function]\nTSR - Temporal Score Rescaling "
         "(2510.01184)\n\nRescaling the model's score or noise to steer the sampling diversity.\n"}),
    # comfy_extras/nodes_lumina2.py
    "RenormCFG": ({"model": ["MODEL"], "cfg_trunc": ["FLOAT", {"default": 100, "min": 0.0, "max": 100.0,
                                                              "step": 0.01, "advanced": True}],
                   "renorm_cfg": f(1.0, 0.0, 100.0, 0.01, advanced=True)},
                  ["MODEL"], "model/patch", "RenormCFG", "comfy_extras.nodes_lumina2", {}),
    # comfy_extras/nodes_custom_sampler.py
    "ManualSigmas": ({"sigmas": ["STRING", {"default": "1, 0.5", "multiline": False}]}, ["SIGMAS"],
                     "experimental/custom_sampling", "ManualSigmas", "comfy_extras.nodes_custom_sampler",
                     {"experimental": True}),
    # comfy_extras/nodes_string.py: the regular-expression nodes
    "RegexMatch": ({"string": TEXT_IN, "regex_pattern": TEXT_IN, **FLAGS}, ["BOOLEAN"], "utils/string", "Regex Match",
                   "comfy_extras.nodes_string", {"output_name": ["matches"]}),
    "RegexExtract": ({"string": TEXT_IN, "regex_pattern": TEXT_IN,
                      "mode": [["First Match", "All Matches", "First Group", "All Groups"]], **FLAGS,
                      "group_index": ["INT", {"default": 1, "min": 0, "max": 100}]},
                     ["STRING"], "utils/string", "Regex Extract", "comfy_extras.nodes_string", {}),
    "RegexReplace": ({"string": TEXT_IN, "regex_pattern": TEXT_IN, "replace": TEXT_IN}, ["STRING"], "utils/string",
                     "Regex Replace", "comfy_extras.nodes_string",
                     {"description": "Find and replace text using regex patterns.", "optional": {
                         **FLAGS, "dotall": ["BOOLEAN", {"default": False, "tooltip": DOTALL_TIP}],
                         "count": ["INT", {"default": 0, "min": 0, "max": 100, "tooltip": COUNT_TIP}]}}),
    # comfy_extras/nodes_dataset.py: the text transforms (TextProcessingNode, one text at a time)
    **{name: ({"texts": ["STRING", {"multiline": False, "tooltip": "Text to process."}], **extra}, ["STRING"],
              "text", display, "comfy_extras.nodes_dataset",
              {"output_name": ["texts"], "description": description, "experimental": True,
               **({"deprecated": True} if display.endswith("(DEPRECATED)") else {})})
       for name, display, description, extra in (
           ("TextToLowercase", "Convert Text to Lowercase (DEPRECATED)", "Convert text to lowercase.", {}),
           ("TextToUppercase", "Convert Text to Uppercase (DEPRECATED)", "Convert text to uppercase.", {}),
           ("TruncateText", "Truncate Text", "Truncate text to a maximum length.",
            {"max_length": ["INT", {"default": 77, "min": 1, "max": 10000, "tooltip": "Maximum text length."}]}),
           ("AddTextPrefix", "Add Text Prefix (DEPRECATED)", "Add a prefix to all texts.",
            {"prefix": line("Prefix to add.")}),
           ("AddTextSuffix", "Add Text Suffix (DEPRECATED)", "Add a suffix to all texts.",
            {"suffix": line("Suffix to add.")}),
           ("ReplaceText", "Replace Text (DEPRECATED)", "Replace text in all texts.",
            {"find": line("Text to find."), "replace": line("Text to replace with.")}),
           ("StripWhitespace", "Strip Whitespace (DEPRECATED)", "Strip leading and trailing whitespace from all texts.",
            {}))},
    # comfy_extras/nodes_logic.py, nodes_number_convert.py, nodes_images.py
    "ComfySwitchNode": ({"switch": ["BOOLEAN"]}, ["COMFY_MATCHTYPE_V3"], "utilities/logic", "If/Else Switch",
                        "comfy_extras.nodes_logic",
                        {"optional": {"on_false": BRANCH, "on_true": BRANCH}, "output_name": ["output"],
                         "experimental": True}),
    "ComfyNotNode": ({"value": ["*"]}, ["BOOLEAN"], "utilities/logic", "Not", "comfy_extras.nodes_logic",
                     {"description": "Logical NOT operation. Returns true if the value is falsy. Uses Python's rules "
                      "for truthiness."}),
    "ComfyNumberConvert": ({"value": ["INT,FLOAT,STRING,BOOLEAN", {"display_name": "value"}]}, ["FLOAT", "INT"],
                           "math", "Number Convert", "comfy_extras.nodes_number_convert", {}),
    "GetLatentSize": ({"latent": ["LATENT", {"tooltip": "The image or video latent to inspect."}]},
                      ["INT", "INT", "INT", "INT"], "latent", "Get Image/Video Latent Size",
                      "comfy_extras.nodes_images",
                      {"output_name": ["width", "height", "frames", "batch_size"],
                       "hidden": {"unique_id": "UNIQUE_ID"},
                       "description": "Returns the width, height, frame count, and batch size of an image or video "
                       "latent."}),
    # comfy_extras/nodes_dataset.py: the image transforms (ImageProcessingNode)
    **{name: ({"images": ["IMAGE", {"tooltip": "Image to process."}], **extra}, ["IMAGE"], category, display,
              "comfy_extras.nodes_dataset",
              {"output_name": ["images"], "description": description, "experimental": True,
               **({"deprecated": True} if display.endswith("(DEPRECATED)") else {})})
       for name, display, category, description, extra in (
           ("ResizeImagesByShorterEdge", "Resize Images by Shorter Edge (DEPRECATED)", "image/transform",
            "Resize images so that the shorter edge matches the specified dimension while preserving aspect ratio.",
            {"shorter_edge": tip_int(512, 1, 8192, "Target dimension for the shorter edge.")}),
           ("ResizeImagesByLongerEdge", "Resize Images by Longer Edge (DEPRECATED)", "image/transform",
            "Resize images so that the longer edge matches the specified dimension while preserving aspect ratio.",
            {"longer_edge": tip_int(1024, 1, 8192, "Target dimension for the longer edge.")}),
           ("CenterCropImages", "Crop Image (Center)", "image/transform",
            "Center crop an image to the specified dimensions.",
            {"width": tip_int(512, 1, 8192, "Crop width."), "height": tip_int(512, 1, 8192, "Crop height.")}),
           ("NormalizeImages", "Normalize Image Colors", "image/color",
            "Normalize images using mean and standard deviation.",
            {"mean": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "tooltip": "Mean value for normalization.",
                                "advanced": True}],
             "std": ["FLOAT", {"default": 0.5, "min": 0.001, "max": 1.0,
                               "tooltip": "Standard deviation for normalization.", "advanced": True}]}),
           ("AdjustBrightness", "Adjust Brightness", "image/adjustments", "Adjust the brightness of an image.",
            {"factor": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "tooltip":
                                  "Brightness factor. 1.0 = no change, <1.0 = darker, >1.0 = brighter."}]}),
           ("AdjustContrast", "Adjust Contrast", "image/adjustments", "Adjust the contrast of an image.",
            {"factor": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "tooltip":
                                  "Contrast factor. 1.0 = no change, <1.0 = less contrast, >1.0 = more contrast."}]}),
       )},
    "ImageGrid": ({"images": ["IMAGE", {"tooltip": "List of images to process."}],
                   "columns": tip_int(4, 1, 20, "Number of columns in the grid."),
                   "cell_width": tip_int(256, 32, 2048, "Width of each cell in the grid.", advanced=True),
                   "cell_height": tip_int(256, 32, 2048, "Height of each cell in the grid.", advanced=True),
                   "padding": tip_int(4, 0, 50, "Padding between images.", advanced=True)},
                  ["IMAGE"], "image/batch", "Make Image Grid", "comfy_extras.nodes_dataset",
                  {"output_name": ["images"], "description": "Arrange multiple images into a grid layout.",
                   "experimental": True}),
    # comfy_extras/nodes_lora_debug.py
    "LoraLoaderBypass": ({"model": ["MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}],
                          "clip": ["CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}],
                          "lora_name": [[], {"tooltip": "The name of the LoRA."}],
                          "strength_model": f(1.0, -100.0, 100.0, 0.01, tooltip="How strongly to modify the diffusion "
                                              "model. This value can be negative."),
                          "strength_clip": f(1.0, -100.0, 100.0, 0.01, tooltip="How strongly to modify the CLIP model. "
                                             "This value can be negative.")},
                         ["MODEL", "CLIP"], "loaders", "Load LoRA (Bypass) (For debugging)",
                         "comfy_extras.nodes_lora_debug", {"description": BYPASS, "experimental": True}),
    "LoraLoaderBypassModelOnly": ({"model": ["MODEL"], "lora_name": [[]],
                                   "strength_model": f(1.0, -100.0, 100.0, 0.01)}, ["MODEL"], "loaders",
                                  "Load LoRA (Bypass, Model Only) (for debugging)", "comfy_extras.nodes_lora_debug",
                                  {"description": BYPASS, "experimental": True}),
    "ImageCropV2": ({"image": ["IMAGE"], "crop_region": ["BOUNDING_BOX", {
        "default": {"x": 0, "y": 0, "width": 512, "height": 512}, "socketless": True, "component": "ImageCrop"}]},
        ["IMAGE"], "image/transform", "Crop Image", "comfy_extras.nodes_images",
        {"description": "Crop an image to the specified dimensions."}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_object_info_matches_comfyui(name):
    check_object_info(name, EXPECTED[name])
