"""A refiner on the flow families: the switch point is the main model's flow time (1 - sigma), not a
UNet timestep; a refiner of another family (SD3 <-> Flux: the same latent shapes, other latent
spaces; SDXL <-> Flux) is refused in one line naming both."""
import re

import pytest

from dit_fixtures import flux_parts, load_tiny, sd3_parts
from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.pipeline import load
from opensd.pipeline.refiner import Refiner
from workflow_models import TINY_SDXL

KW = dict(steps=4, seed=2, width=32, height=32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flowref")
    return (load_tiny(tmp / "a", "flux", flux_parts(seed=0)), load_tiny(tmp / "b", "flux", flux_parts(seed=7)),
            load_tiny(tmp / "sd3", "sd3", sd3_parts()),
            load(write_random_checkpoint(tmp / "sdxl.safetensors", TINY_SDXL), device="cpu", precision="fp32"))


def _calls(pipe) -> list:
    sigmas = []
    network = pipe.family.network(pipe.model)
    handle = network.register_forward_pre_hook(lambda m, args: sigmas.append(float(args[1][0])))
    return sigmas, handle


@pytest.mark.parametrize("switch_at", [0.3, 0.6])
def test_the_switch_is_at_the_flow_time(models, switch_at):
    main, refiner = models[0], models[1]
    sigmas = main.sigmas(main._params("a cat", "", dict(KW)), KW["steps"])
    expected = next(i for i, s in enumerate(sigmas[:-1]) if 1 - float(s) >= switch_at)
    assert 0 < expected < KW["steps"]  # the test means something: both models run
    ours, h1 = _calls(main)
    theirs, h2 = _calls(refiner)
    try:
        image = main.txt2img("a cat", refiner=Refiner(refiner, switch_at), **KW)[0]
    finally:
        h1.remove()
        h2.remove()
    assert len(ours) == expected and len(theirs) == KW["steps"] - expected
    assert image.info["refiner"].pipe is refiner


def test_a_refiner_of_another_family_is_refused(models):
    flux, _, sd3, sdxl = models
    for main, other in ((sd3, flux), (flux, sd3), (sdxl, flux)):
        said = (f"refiner: {other.name} is a {other.family.label} model and {main.name} a {main.family.label} model: "
                "a refiner must be of the main model's family")
        with pytest.raises(InvalidArgument, match=f"^{re.escape(said)}$"):
            main.txt2img("a cat", refiner=Refiner(other, 0.5), **KW)
