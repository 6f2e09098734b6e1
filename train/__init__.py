"""reelora.train: typed config, the LoRA training loop, checkpoints and the latent/text cache."""
