"""opensd: a fully local, private Stable Diffusion engine."""
from .version import __version__

__all__ = ["__version__", "load"]


def load(path, **kwargs):
    """Load a checkpoint file or diffusers folder into a Pipeline (see pipeline.pipeline.load)."""
    from .pipeline.pipeline import load as _load
    return _load(path, **kwargs)
