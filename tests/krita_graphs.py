"""Krita AI Diffusion's requests, rebuilt from its source (Acly/krita-ai-diffusion, ai_diffusion/backend/
comfy_client.py, comfy_workflow.py, workflow.py, resources.py) for the tests that replay it:

* what it checks on connecting: the custom nodes it requires, and for SD 1.5 the model files it
  looks for (by lower-cased substrings of each file name, '*' splitting a pattern into parts);
* its graphs for an SD 1.5 checkpoint, node for node in its order and numbering (ids from "1",
  every required input it leaves out filled from /object_info's default, as its ComfyWorkflow.add
  does): generate (txt2img), refine (img2img at a strength) and inpaint (fill), the images going
  in through ETN_LoadImageCache and out through ETN_SaveImageCache (or, as plugin versions before
  the image cache did, ETN_LoadImageBase64 / ETN_SendImageWebSocket)."""
from __future__ import annotations

from dataclasses import dataclass

# resources.required_custom_nodes: package -> node names
REQUIRED_NODES = {
    "ControlNet Preprocessors": ["InpaintPreprocessor", "DepthAnythingV2Preprocessor"],
    "IP-Adapter": ["IPAdapterModelLoader", "IPAdapter"],
    "External Tooling Nodes": ["ETN_LoadImageCache", "ETN_SaveImageCache", "ETN_Translate"],
    "Inpaint Nodes": ["INPAINT_LoadFooocusInpaint", "INPAINT_ShrinkMask", "INPAINT_StabilizeMask",
                      "INPAINT_ColorMatch"],
}
# the same list in plugin versions before the image cache (1.38: images in as base64, out over the websocket)
REQUIRED_NODES_1_38 = {
    "ControlNet Preprocessors": ["InpaintPreprocessor", "DepthAnythingV2Preprocessor"],
    "IP-Adapter": ["IPAdapterModelLoader", "IPAdapter"],
    "External Tooling Nodes": ["ETN_LoadImageBase64", "ETN_LoadMaskBase64", "ETN_SendImageWebSocket", "ETN_Translate"],
    "Inpaint Nodes": ["INPAINT_LoadFooocusInpaint", "INPAINT_ApplyFooocusInpaint", "INPAINT_ExpandMask"],
}
# nodes the plugin's own workflows emit for SD 1.5 beyond the required ones (and older plugins' transfer nodes)
EMITTED_NODES = ["ETN_ApplyMaskToImage", "INPAINT_ExpandMask", "INPAINT_MaskedBlur", "INPAINT_MaskedFill",
                 "INPAINT_LoadInpaintModel", "INPAINT_InpaintWithModel", "ETN_LoadImageBase64", "ETN_LoadMaskBase64",
                 "ETN_SendImageWebSocket",
                 "ETN_BackgroundRegion", "ETN_DefineRegion", "ETN_ListRegionMasks", "ETN_AttentionMask",
                 "ETN_TileLayout", "ETN_ExtractImageTile", "ETN_ExtractMaskTile", "ETN_GenerateTileMask",
                 "ETN_MergeImageTile"]
# (node, input) whose option list connect() searches for models
MODEL_LISTS = {
    "text_encoder": ("DualCLIPLoader", "clip_name1"), "vae": ("VAELoader", "vae_name"),
    "controlnet": ("ControlNetLoader", "control_net_name"), "clip_vision": ("CLIPVisionLoader", "clip_name"),
    "ip_adapter": ("IPAdapterModelLoader", "ipadapter_file"), "style": ("StyleModelLoader", "style_model_name"),
    "upscaler": ("UpscaleModelLoader", "model_name"), "inpaint": ("INPAINT_LoadInpaintModel", "model_name"),
    "lora": ("LoraLoader", "lora_name"),
}
# resources.required_resource_ids for SD 1.5 (and Arch.all) with their search_paths
SD15_REQUIRED = [
    ("controlnet", "inpaint", ["control_v11p_sd15_inpaint"]),
    ("controlnet", "blur", ["control_v11f1e_sd15_tile", "control_lora_rank128_v11f1e_sd15_tile"]),
    ("ip_adapter", "reference", ["ip-adapter_sd15"]),
    ("clip_vision", "ip_adapter", ["sd1.5/pytorch_model.bin", "sd1.5/model.safetensors",
                                   "clip-vision_vit-h.safetensors", "clip-vit-h-14-laion2b-s32b-b79k"]),
    ("lora", "hyper", ["Hyper-SD15-8steps-CFG-lora"]),
    ("upscaler", "default", ["4x_NMKD-Superscale-SP_178000_G.pth"]),
    ("upscaler", "fast_2x", ["OmniSR_X2_DIV2K.safetensors"]),
    ("inpaint", "default", ["MAT_Places512_G_fp16", "Places_512_FullData_G", "big-lama.pt"]),
]


def find_model(names: list[str], patterns: list[str]) -> str | None:
    """comfy_client._find_model: the first name holding every '*'-part of a pattern, "krita" names first."""
    found = []
    for i, pattern in enumerate(patterns):
        for name in names:
            low = name.replace("\\", "/").lower()
            if all(part in low for part in pattern.lower().split("*")):
                found.append((0 if "krita" in low else i * 100 + len(low), name))
    return min(found)[1] if found else None


def options(info: dict, node: str, name: str) -> list[str]:
    """ComfyObjectInfo.options: a node's list for a required input, [] when the node is absent."""
    spec = info.get(node, {}).get("input", {}).get("required", {}).get(name)
    if not spec:
        return []
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0] if isinstance(spec[0], list) else []


@dataclass
class Bounds:
    x: int
    y: int
    width: int
    height: int


class Workflow:
    """comfy_workflow.ComfyWorkflow.add: ids "1", "2", ...; links as [id, output]; defaults filled."""

    def __init__(self, info: dict):
        self.root: dict[str, dict] = {}
        self.info = info
        self._cached: dict[str, object] = {}

    def _defaults(self, class_type: str, inputs: dict) -> dict:
        for k, spec in self.info[class_type]["input"].get("required", {}).items():
            if k in inputs:
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            default = opts.get("default")
            if default is None and isinstance(spec[0], list) and spec[0]:
                default = spec[0][0]
            if default is None:
                default = {"INT": 0, "FLOAT": 0.0, "BOOL": False, "STRING": ""}.get(spec[0])
            if default is not None:
                inputs[k] = default
        return inputs

    def add(self, class_type: str, outputs: int = 1, **inputs):
        inputs = self._defaults(class_type, inputs)
        node = str(len(self.root) + 1)
        self.root[node] = {"class_type": class_type, "inputs": inputs}
        links = tuple([node, i] for i in range(outputs))
        return links[0] if outputs == 1 else links

    def add_cached(self, class_type: str, outputs: int = 1, **inputs):
        key = class_type + str(inputs)
        if key not in self._cached:
            self._cached[key] = self.add(class_type, outputs, **inputs)
        return self._cached[key]

    # the builders workflow.py calls, in the order they add nodes
    def checkpoint(self, name: str):
        return self.add_cached("CheckpointLoaderSimple", 3, ckpt_name=name)

    def encode(self, clip, positive: str, negative: str):
        return (self.add("CLIPTextEncode", clip=clip, text=positive),
                self.add("CLIPTextEncode", clip=clip, text=negative))

    def sample(self, model, cond, latent, sampler="dpmpp_2m", scheduler="karras", steps=4, start_at_step=0,
               cfg=7.0, seed=1234):
        guider = self.add("CFGGuider", model=model, positive=cond[0], negative=cond[1], cfg=cfg)
        sigmas = self.add("BasicScheduler", model=model, scheduler=scheduler, steps=steps, denoise=1.0)
        if start_at_step > 0:
            sigmas = self.add("SplitSigmas", 2, sigmas=sigmas, step=start_at_step)[1]
        noise = self.add_cached("RandomNoise", noise_seed=seed)
        sampler = self.add_cached("KSamplerSelect", sampler_name=sampler)
        return self.add("SamplerCustomAdvanced", 2, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                        latent_image=latent)[1]

    def load_image(self, image_id: str):
        return self.add("ETN_LoadImageCache", 2, id=image_id)[0]

    def load_mask(self, image_id: str):
        return self.add("ETN_LoadImageCache", 2, id=image_id)[1]

    def masked_result(self, image, mask, blend: int) -> dict:
        """denoise_to_compositing_mask, apply_mask and send_image: the result with its mask as alpha."""
        mask = self.add("ThresholdMask", mask=mask, value=0.0)
        if blend > 0:
            mask = self.add("INPAINT_ShrinkMask", mask=mask, shrink=blend // 2, blur=blend, blur_type="gaussian")
        self.send_image(self.add("ETN_ApplyMaskToImage", image=image, mask=mask))
        return self.root

    def send_image(self, image, websocket=False):
        return self.add("ETN_SendImageWebSocket" if websocket else "ETN_SaveImageCache", images=image, format="PNG")


def generate(info, ckpt, width, height, positive, negative, batch=1, seed=1234, websocket=False) -> dict:
    w = Workflow(info)
    model, clip, vae = w.checkpoint(ckpt)
    latent = w.add("EmptyLatentImage", width=width, height=height, batch_size=batch)
    cond = w.encode(clip, positive, negative)
    out = w.sample(model, cond, latent, seed=seed)
    w.send_image(w.add("VAEDecode", vae=vae, samples=out), websocket)
    return w.root


def refine(info, ckpt, image_id, positive, negative, steps=8, start_at_step=4, seed=1234, image_b64=None) -> dict:
    w = Workflow(info)
    model, clip, vae = w.checkpoint(ckpt)
    image = w.add("ETN_LoadImageBase64", 2, image=image_b64)[0] if image_b64 else w.load_image(image_id)
    cond = w.encode(clip, positive, negative)
    latent = w.add("VAEEncode", vae=vae, pixels=image)
    out = w.sample(model, cond, latent, steps=steps, start_at_step=start_at_step, seed=seed)
    w.send_image(w.add("VAEDecode", vae=vae, samples=out))
    return w.root


def inpaint(info, ckpt, controlnet, image_id, mask_id, target: Bounds, positive, negative, grow=8, feather=8,
            blend=8, color_match=1.0, seed=1234, fill_model=None) -> dict:
    """workflow.inpaint for SD 1.5 at strength 1: in "fill" mode the masked area pre-filled by a blur,
    in "Remove object" mode (`fill_model`: its inpaint model, models.inpaint["default"]) by that
    model (FillMode.inpaint: INPAINT_LoadInpaintModel, INPAINT_InpaintWithModel with the plugin's
    fixed seed); then the inpaint ControlNet, the result cropped to `target` with its compositing
    mask as alpha."""
    w = Workflow(info)
    model, clip, vae = w.checkpoint(ckpt)
    model = w.add("DifferentialDiffusion", model=model)
    in_image = w.load_image(image_id)
    in_mask = w.load_mask(mask_id)
    inpaint_mask = w.add("INPAINT_ExpandMask", mask=in_mask, grow=grow, blur=feather, blur_type="linear")
    cropped_mask = w.add("CropMask", mask=inpaint_mask, x=target.x, y=target.y, width=target.width,
                         height=target.height)
    inpaint_mask = w.add("INPAINT_StabilizeMask", mask=inpaint_mask, epsilon=0.01)
    fill_mask = in_mask
    if grow - feather // 2 > 0:
        fill_mask = w.add("INPAINT_ExpandMask", mask=in_mask, grow=grow - feather // 2, blur=0, blur_type="gaussian")
    if fill_model is None:
        filled = w.add("INPAINT_MaskedBlur", image=in_image, mask=fill_mask, blur=65, falloff=9)
    else:
        loaded = w.add("INPAINT_LoadInpaintModel", model_name=fill_model)
        filled = w.add("INPAINT_InpaintWithModel", inpaint_model=loaded, image=in_image, mask=fill_mask, seed=834729)
    cond = w.encode(clip, positive, negative)
    hint = w.add("InpaintPreprocessor", image=in_image, mask=inpaint_mask, black_pixel_for_xinsir_cn=False)
    cn = w.add_cached("ControlNetLoader", control_net_name=controlnet)
    cond = w.add("ControlNetApplyAdvanced", 2, positive=cond[0], negative=cond[1], control_net=cn, image=hint,
                 vae=vae, strength=1.0, start_percent=0.0, end_percent=1.0)
    latent = w.add("VAEEncode", vae=vae, pixels=filled)
    latent = w.add("SetLatentNoiseMask", samples=latent, mask=inpaint_mask)
    out = w.sample(model, cond, latent, seed=seed)
    image = w.add("VAEDecode", vae=vae, samples=out)
    if color_match > 0:
        image = w.add("INPAINT_ColorMatch", target=image, reference=filled, exclude_mask=inpaint_mask,
                      strength=color_match)
    image = w.add("ImageCrop", image=image, x=target.x, y=target.y, width=target.width, height=target.height)
    return w.masked_result(image, cropped_mask, blend)


def refine_region(info, ckpt, controlnet, image_id, mask_id, target: Bounds, positive, negative, steps=8,
                  start_at_step=3, grow=4, feather=4, blend=4, color_match=1.0, seed=1234) -> dict:
    """workflow.refine_region for SD 1.5 (Refine with a selection, strength over 0.5: with the inpaint
    ControlNet): the selection re-sampled from the canvas, cropped to `target`, its mask as alpha."""
    w = Workflow(info)
    model, clip, vae = w.checkpoint(ckpt)
    model = w.add("DifferentialDiffusion", model=model)
    in_image = w.load_image(image_id)
    in_mask = w.add("INPAINT_ExpandMask", mask=w.load_mask(mask_id), grow=grow, blur=feather, blur_type="linear")
    cond = w.encode(clip, positive, negative)
    hint = w.add("InpaintPreprocessor", image=in_image, mask=in_mask, black_pixel_for_xinsir_cn=False)
    cn = w.add_cached("ControlNetLoader", control_net_name=controlnet)
    cond = w.add("ControlNetApplyAdvanced", 2, positive=cond[0], negative=cond[1], control_net=cn, image=hint,
                 vae=vae, strength=1.0, start_percent=0.0, end_percent=1.0)
    latent = w.add("SetLatentNoiseMask", samples=w.add("VAEEncode", vae=vae, pixels=in_image), mask=in_mask)
    out = w.sample(model, cond, latent, steps=steps, start_at_step=start_at_step, seed=seed)
    image = w.add("VAEDecode", vae=vae, samples=out)
    if color_match > 0:
        image = w.add("INPAINT_ColorMatch", target=image, reference=in_image, exclude_mask=in_mask,
                      strength=color_match)
    image = w.add("ImageCrop", image=image, x=target.x, y=target.y, width=target.width, height=target.height)
    mask = w.add("CropMask", mask=in_mask, x=target.x, y=target.y, width=target.width, height=target.height)
    return w.masked_result(image, mask, blend)


def client_tiles(width: int, height: int, min_size: int, padding: int) -> tuple[int, int]:
    """resolution.TileLayout on the client: (blending, tile count), from which it numbers the tiles."""
    blending = max(1, padding // 16) * 8 if padding > 0 else 0
    count_w, count_h = max(1, width // (min_size - 2 * padding)), max(1, height // (min_size - 2 * padding))
    return blending, count_w * count_h


def upscale_tiled(info, ckpt, image_id, width, height, positive, negative, min_size=64, padding=16, steps=6,
                  start_at_step=3, seed=1234) -> dict:
    """workflow.upscale_tiled for SD 1.5 without an upscale model: the image resized to width x height,
    then every tile re-sampled and merged back."""
    w = Workflow(info)
    model, clip, vae = w.checkpoint(ckpt)
    upscaled = w.add("ImageScale", image=w.load_image(image_id), width=width, height=height,
                     upscale_method="lanczos", crop="disabled")
    blending, total = client_tiles(width, height, min_size, padding)
    layout = w.add("ETN_TileLayout", image=upscaled, min_tile_size=min_size, padding=padding, blending=blending,
                   multiple=8)
    out, cond = upscaled, None
    for i in range(total):
        tile = w.add("ETN_ExtractImageTile", image=upscaled, layout=layout, index=i)
        mask = w.add("ETN_GenerateTileMask", layout=layout, index=i)
        cond = cond or w.encode(clip, positive, negative)  # the prompt is encoded once, for the first tile
        latent = w.add("SetLatentNoiseMask", samples=w.add("VAEEncode", vae=vae, pixels=tile), mask=mask)
        sampled = w.sample(model, cond, latent, steps=steps, start_at_step=start_at_step, seed=seed)
        out = w.add("ETN_MergeImageTile", image=out, layout=layout, index=i,
                    tile=w.add("VAEDecode", vae=vae, samples=sampled))
    w.send_image(out)
    return w.root


def generate_regions(info, ckpt, width, height, root, background, region, mask_id, negative, seed=1234) -> dict:
    """workflow.generate with two regions (apply_attention_mask): the background's and one region's
    prompts in an ETN_AttentionMask over the model; the root prompt is the sampler's positive."""
    w = Workflow(info)
    model, clip, vae = w.checkpoint(ckpt)
    regions = w.add("ETN_BackgroundRegion", conditioning=w.add("CLIPTextEncode", clip=clip, text=background))
    mask = w.load_mask(mask_id)
    regions = w.add("ETN_DefineRegion", regions=regions, mask=mask,
                    conditioning=w.add("CLIPTextEncode", clip=clip, text=region))
    model = w.add("ETN_AttentionMask", model=model, regions=regions)
    latent = w.add("EmptyLatentImage", width=width, height=height, batch_size=1)
    out = w.sample(model, w.encode(clip, root, negative), latent, seed=seed)
    w.send_image(w.add("VAEDecode", vae=vae, samples=out))
    return w.root
