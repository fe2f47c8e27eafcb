"""Scale-out: the job queue hands jobs to workers (worker.py). A local worker runs them in this process
(the default, no extra packages); Ray workers (ray_worker.py, pool.py; `pip install "opensd[ray]"`) run
them on actors across GPUs and machines. Batch generation (batch.py) and data-parallel training
(ddp.py) build on the same pieces."""
