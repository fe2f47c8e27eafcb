"""opensd: a fully local, private Stable Diffusion engine."""
__version__ = "0.1.0"
