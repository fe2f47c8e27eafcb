"""HTTP face of opensd: the AUTOMATIC1111 API (/sdapi/v1) and the ComfyUI API (/prompt family)
served by one FastAPI app over one persistent job queue. Build it with `create_app(Settings(...))`."""
from .settings import Settings


def create_app(settings: Settings):
    from .app import create_app as _create
    return _create(settings)


__all__ = ["Settings", "create_app"]
