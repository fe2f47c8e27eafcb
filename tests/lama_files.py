"""A random LaMa in big-lama's own layout (spandrel builds LaMa at one size only: the full
51M-parameter big-lama network, so that is what the tests use), written as the files users have:
big-lama.pt (a TorchScript archive, traced as the original was, keys "generator.model.N...") and a
.safetensors conversion. Weights are rounded to fp16, so the fp16 files hold them exactly."""
from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from spandrel.architectures.LaMa import LaMa


@functools.lru_cache(maxsize=1)
def random_lama(seed: int = 0) -> LaMa:
    """spandrel's LaMa (4 channels in: image and mask; 3 out) with random weights, in eval mode.
    Built on meta and filled in place (the default initialisation of 51M weights is slow)."""
    with torch.device("meta"):
        net = LaMa(in_nc=4, out_nc=3)
    net = net.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(seed)
    for name, t in net.state_dict().items():
        if name.endswith("running_var"):
            t.uniform_(0.5, 1.5, generator=g)
        elif t.is_floating_point():
            t.normal_(0.0, 0.02, generator=g)
        else:
            t.zero_()
        if t.is_floating_point():
            t.copy_(t.half().float())
    return net


def lama_state_dict(net: LaMa, prefix: str = "generator.model") -> dict[str, torch.Tensor]:
    """The weights under big-lama.pt's names ("generator.model...") or spandrel's ("model.model...")."""
    return {prefix + k[len("model.model"):]: v for k, v in net.state_dict().items()}


def write_lama_safetensors(net: LaMa, path: Path, prefix: str = "generator.model") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in lama_state_dict(net, prefix).items()},
              str(path))
    return path


class _Generator(torch.nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, image, mask):
        return self.generator(image, mask)


def write_lama_torchscript(net: LaMa, path: Path) -> Path:
    """big-lama.pt as lama-cleaner distributes it: the generator traced (here on a small input,
    the trace unchecked, to save time), its weights in fp16."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Generator(copy.deepcopy(net.model)).eval(),
                                 (torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32)), check_trace=False)
        traced.half().save(str(path))
    return path


def tiny_lama(seed: int = 0):
    """spandrel's LaMa wrapper around its own FFC generator at small widths (8 features, 2
    downsamplings, 1 block), as the spandrel descriptor a loaded LaMa file gives: for testing
    the fill's steps quickly (spandrel's loader builds only the full-size network)."""
    from spandrel import MaskedImageModelDescriptor, SizeRequirements
    from spandrel.architectures.LaMa import LaMaArch
    from spandrel.architectures.LaMa.__arch.LaMa import FFCResNetGenerator

    with torch.device("meta"):
        net = LaMa(in_nc=4, out_nc=3)
    torch.manual_seed(seed)
    net.model = FFCResNetGenerator(4, 3, ngf=8, n_downsampling=2, n_blocks=1)
    net.eval()
    return MaskedImageModelDescriptor(net, net.state_dict(), architecture=LaMaArch(), purpose="Inpainting", tags=[],
                                      supports_half=False, supports_bfloat16=True, input_channels=3,
                                      output_channels=3, size_requirements=SizeRequirements(minimum=16,
                                                                                           multiple_of=8))
