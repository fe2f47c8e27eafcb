"""Model-file tools: synthetic checkpoints now; scanning, hashing, merging and converting later."""
