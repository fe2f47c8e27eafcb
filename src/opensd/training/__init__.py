"""Training: one resumable loop and the jobs built on it."""
