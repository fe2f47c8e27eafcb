"""Adapters between models and pipeline: LoRA (kohya and PEFT formats), ControlNet, embeddings."""
