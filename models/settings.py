"""The sampling settings, defined once: the sampler, the validation config and `reelora sample` all use them.

A field left None takes the model family's default (each family module declares its `sample_defaults`
and `tiny_sample_defaults`). Numbers are bounded here so a bad value fails with the setting's name before
any model loads or memory is allocated. This module imports neither torch nor diffusers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

MAX_STEPS = 1000
MAX_FRAMES = 1025
MAX_PIXELS = 4096
MAX_SEED = 2**63 - 1

# (lowest, highest) per numeric field; `check_value` names the field (or flag) a value breaks.
BOUNDS = {
    "steps": (1, MAX_STEPS),
    "num_frames": (1, MAX_FRAMES),
    "height": (1, MAX_PIXELS),
    "width": (1, MAX_PIXELS),
    "guidance": (-math.inf, math.inf),  # any finite scale
    "fps": (1e-3, 1000.0),
    "seed": (0, MAX_SEED),
}
INTEGER = {"steps", "num_frames", "height", "width", "seed"}


def bound_error(name: str, value) -> str | None:
    """Why `value` is not allowed for setting `name` ('must be in [1, 1000], got 0'), or None when it is."""
    if value is None or name not in BOUNDS:
        return None
    lo, hi = BOUNDS[name]
    if name in INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if not lo <= value <= hi:
        shown = "2**63-1" if hi == MAX_SEED else f"{hi:g}"
        return f"must be in [{lo:g}, {shown}], got {value!r}"
    return None


def check_value(name: str, value, where: str | None = None) -> None:
    """Raise ValueError `'<where>: must be ...'` when `value` is outside the bounds of setting `name`.

    `where` is how the user wrote it (`--steps`, `validation.sample.steps`); default the field name.
    """
    error = bound_error(name, value)
    if error:
        raise ValueError(f"{where or name}: {error}")


@dataclass
class SampleSettings:
    """How each clip is sampled; None takes the model family's default."""

    steps: int | None = None
    """Denoising steps (1 to 1000)."""
    guidance: float | None = None
    """Classifier-free guidance scale (<= 1 disables the negative branch)."""
    num_frames: int | None = None
    """Frames per clip (at most 1025); num_frames - 1 must be a multiple of the VAE's temporal compression."""
    height: int | None = None
    """Frame height in pixels (at most 4096), a multiple of the family's size multiple."""
    width: int | None = None
    """Frame width in pixels (at most 4096), a multiple of the family's size multiple."""
    fps: float | None = None
    """Frame rate of the written mp4 (playback only; does not change the frames)."""
    negative_prompt: str | None = None
    """What to steer away from (used when guidance > 1)."""

    def __post_init__(self):
        for f in fields(SampleSettings):
            check_value(f.name, getattr(self, f.name))

    def settings(self) -> "SampleSettings":
        """Just the settings (a ClipRequest without its prompt, seed and name)."""
        return SampleSettings(**{f.name: getattr(self, f.name) for f in fields(SampleSettings)})

    def filled(self, defaults: "SampleSettings") -> dict:
        """Field -> value, unset fields taken from `defaults`."""
        return {f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(defaults, f.name)
                for f in fields(SampleSettings)}


def setting_names() -> list[str]:
    return [f.name for f in fields(SampleSettings)]
