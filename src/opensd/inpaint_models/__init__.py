"""Object-removal inpaint models (LaMa; MAT with the optional spandrel_extra_arches package), as
Acly's comfyui-inpaint-nodes runs them: the file read without running code and handed to spandrel
(model_file), and the fill over an image and mask at the model's working size (fill)."""
from .fill import inpaint_with_model, working_size
from .model_file import inpaint_architecture, load_inpaint_model, read_inpaint_weights

__all__ = ["inpaint_architecture", "inpaint_with_model", "load_inpaint_model", "read_inpaint_weights", "working_size"]
