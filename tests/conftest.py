import os
from pathlib import Path

import torch

# The test models are tiny: one thread avoids two threads fighting over 2 cores (measured ~10x
# slower for small convs on a busy machine) and keeps timings stable.
torch.set_num_threads(1)

# A user's own models folder and config file (library/user_config.py) must not change what tests see.
os.environ.pop("OPENSD_MODELS_DIR", None)
os.environ["OPENSD_CONFIG"] = str(Path(__file__).parent / "no-such-opensd-config.toml")
