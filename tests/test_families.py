"""The model-family seam: every model config belongs to exactly one family, which builds it, and
outside the UNet family only the code written for UNets (their adapters, checkpoint formats, LDM
configs, FreeU, SDXL's size vector, training) reaches into `.unet`."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import opensd
from opensd import families
from opensd.models import config as C
from opensd.models import config_dit as CD
from opensd.models.config import TextEncoderConfig

CONFIGS = {
    "sd1": C.sd1(), "sd2": C.sd2(), "sdxl": C.sdxl(), "sdxl_refiner": C.sdxl_refiner(),
    "sd3": CD.SD3ModelConfig(CD.SD35_MEDIUM, CD.SD3_VAE, TextEncoderConfig(), None, CD.T5_XXL),
    "flux": CD.FluxModelConfig(CD.FLUX_SCHNELL, CD.FLUX_VAE, TextEncoderConfig(pooled=True), CD.T5_XXL),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_one_family_that_builds_it(name):
    cfg = CONFIGS[name]
    owners = [f for f in families.FAMILIES if f.owns(cfg)]
    assert owners == [families.family_of(cfg)]
    with torch.device("meta"):
        model = owners[0].build(cfg)
    assert owners[0].network(model) is not None and model.vae is not None
    assert owners[0].parameter_count(cfg) > 100_000_000


# Modules written for UNets (or reading UNet files), where `.unet` is at home.
UNET_CODE = ("models/", "families/unet.py", "adapters/", "checkpoints/", "library/", "training/",
             "pipeline/parts.py",           # ComfyUI's UNETLoader/CLIPLoader for the UNet families
             "pipeline/conditioning.py",    # SDXL's size vector
             "workflows/nodes_loaders.py",  # CheckpointLoader's LDM yaml (refused for other families first)
             "workflows/nodes_model_patches.py")  # FreeU (likewise)
UNET_ACCESS = re.compile(r"(model|config|pipe)\.unet\b")


def test_only_unet_code_reaches_into_unet():
    root = Path(opensd.__file__).parent
    leaks = [f"{path.relative_to(root)}:{n}" for path in root.rglob("*.py")
             if not path.relative_to(root).as_posix().startswith(UNET_CODE)
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if UNET_ACCESS.search(line)]
    assert leaks == [], ("reach the denoising network through the model's family (pipe.family.network(pipe.model), "
                         "family.net_fn, families/base.py), not .unet: " + ", ".join(leaks))


def test_the_scan_finds_unet_access():
    assert UNET_ACCESS.search("with circular_padding(self.model.unet, vae)")
    assert UNET_ACCESS.search("x = pipe.config.unet.context_dim") and not UNET_ACCESS.search("spec.unet * 2")
