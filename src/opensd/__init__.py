"""opensd: a fully local, private Stable Diffusion engine."""
__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a checkpoint file or diffusers folder into a Pipeline (see pipeline.pipeline.load)."""
    from .pipeline.pipeline import load as _load
    return _load(path, **kwargs)
