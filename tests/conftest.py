import torch

# The test models are tiny: one thread avoids two threads fighting over 2 cores (measured ~10x
# slower for small convs on a busy machine) and keeps timings stable.
torch.set_num_threads(1)
