"""reelora.models."""
