"""The demo's scaffolding, not part of the pipeline a user runs on their own library.

procedural.py (the synthetic pretraining corpus), pretrain.py (the tiny base model's pretraining
recipe), footage.py (real CC-BY sample footage), style.py (the colour/tone style metric), report.py
(the demo's HTML report) and cli.py (`reelora base build`). scripts/demo.sh strings them together.
"""
import os
from pathlib import Path


def cache_root() -> Path:
    """Where the demo keeps what it builds or downloads once: `$XDG_CACHE_HOME/reelora`, default `~/.cache/reelora`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reelora"
