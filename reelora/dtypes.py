"""The one dtype vocabulary: names users write in configs and flags -> torch dtypes.

Short names (fp32, bf16, fp16) are canonical (cache entries hash them); the long torch names are
accepted as aliases. torch is imported only when a dtype is actually built.
"""
from __future__ import annotations

CANONICAL = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Canonical name -> torch attribute name."""
ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
NAMES = (*CANONICAL, *ALIASES)
"""Every accepted name (for argparse `choices`)."""


def canonical_dtype(name: str, key: str = "dtype") -> str:
    """'bfloat16' or 'bf16' -> 'bf16'.

    Raises:
        ValueError: an unknown name, naming `key` (the flag or config key it came from).
    """
    if name in CANONICAL:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"{key}: unknown dtype {name!r}; use one of {', '.join(NAMES)}")


def parse_dtype(name, key: str = "dtype"):
    """A dtype name (or a torch.dtype, passed through) -> torch.dtype; errors name `key`."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, CANONICAL[canonical_dtype(name, key)])
