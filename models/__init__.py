"""reelora.models: backbone specs (wan, ltx) with offline tiny flavours, LoRA attach/export, the sampler.

The notebook API mirrors `reelora sample`:

    from reelora.models import Sampler, sample_clips, load_model
    clips = sample_clips("tiny-wan", ["a prompt"], loras=["runs/x/adapter:0.8"], out="samples")

Names resolve lazily so `import reelora.models` stays cheap (no diffusers import until used).
"""
from importlib import import_module

_EXPORTS = {
    "load_model": "reelora.models.registry",
    "resolve": "reelora.models.registry",
    "Components": "reelora.models.spec",
    "Sampler": "reelora.models.sample",
    "ClipRequest": "reelora.models.sample",
    "SampleSettings": "reelora.models.settings",
    "sample_clips": "reelora.models.sample",
    "read_prompts": "reelora.models.sample",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reelora.models' has no attribute {name!r}")
