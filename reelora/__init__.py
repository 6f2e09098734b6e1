"""reelora: LoRA fine-tuning for open video diffusion models, with rights-aware data and provenance."""

__version__ = "0.1.0"
