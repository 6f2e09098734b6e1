"""Style metric: how far a set of clips is from another in colour and tone (CIELAB), motion reported apart.

The distance is the mean of five terms, all in Lab units so a value reads like an average colour
difference: the 1-D Wasserstein distance between the two sets' pooled pixel distributions of L*, a* and
b* (tone, green-red and blue-yellow casts), the difference in contrast (mean per-frame std of L*) and in
saturation (mean chroma). Pooling pixels makes it independent of resolution, clip count and clip order;
each term is symmetric and obeys the triangle inequality, so the sum does too. Motion energy (mean
absolute frame-to-frame change of L*) is content rather than look, so it is reported, not added.

Clips are numpy arrays [F, H, W, 3] (uint8, or float in [0, 1]); `from_model_output` and `read_video`
convert model tensors and mp4 files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

N_QUANTILES = 256
TERMS = ("L", "a", "b", "contrast", "saturation")

# sRGB (D65) -> XYZ, and the D65 white point.
_RGB2XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                     [0.2126729, 0.7151522, 0.0721750],
                     [0.0193339, 0.1191920, 0.9503041]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (any leading shape, channels last) -> CIELAB (L* in [0, 100])."""
    rgb = np.clip(np.asarray(rgb, np.float64), 0, 1)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB2XYZ.T / _WHITE
    d = 6 / 29
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


@dataclass
class StyleStats:
    """Summary of a clip set: what `style_distance` compares (cheap to keep, e.g. for the studio set)."""

    quantiles: dict[str, np.ndarray]
    """L, a, b: N_QUANTILES quantiles of the pooled pixel values at midpoints (i + 0.5) / N."""
    contrast: float
    """Mean over frames of the std of L* within a frame."""
    saturation: float
    """Mean chroma sqrt(a*^2 + b*^2) over all pixels."""
    motion: float
    """Mean |L*(t+1) - L*(t)| over pixels and consecutive frames (0 for single frames)."""
    mean_lab: tuple[float, float, float]
    num_clips: int

    def to_dict(self) -> dict:
        return {"contrast": self.contrast, "saturation": self.saturation, "motion": self.motion,
                "mean_lab": list(self.mean_lab), "num_clips": self.num_clips}


def _as_float(clip) -> np.ndarray:
    arr = np.asarray(clip)
    if arr.ndim == 3:  # a single image
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"a clip must be [F, H, W, 3] (channels last); got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
        raise ValueError(f"float clips must be in [0, 1] (got [{arr.min():.3f}, {arr.max():.3f}]); "
                         "convert model outputs in [-1, 1] with from_model_output()")
    return arr


def style_stats(clips: Iterable) -> StyleStats:
    """Pool the pixels of `clips` (each [F, H, W, 3]) into the statistics the distance compares."""
    labs, contrasts, motions = [], [], []
    for clip in clips:
        lab = rgb_to_lab(_as_float(clip)).astype(np.float32)  # [F, H, W, 3]
        labs.append(lab.reshape(-1, 3))
        contrasts.append(lab[..., 0].reshape(lab.shape[0], -1).std(axis=1))
        if lab.shape[0] > 1:
            motions.append(np.abs(np.diff(lab[..., 0], axis=0)).mean())
    if not labs:
        raise ValueError("style_stats: no clips given (an empty set has no style)")
    px = np.concatenate(labs)
    u = (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES
    chroma = np.hypot(px[:, 1], px[:, 2])
    return StyleStats(
        quantiles={k: np.quantile(px[:, i], u) for i, k in enumerate("Lab")},
        contrast=float(np.concatenate(contrasts).mean()),
        saturation=float(chroma.mean()),
        motion=float(np.mean(motions)) if motions else 0.0,
        mean_lab=tuple(float(v) for v in px.mean(axis=0)),
        num_clips=len(labs),
    )


def _stats(x) -> StyleStats:
    return x if isinstance(x, StyleStats) else style_stats(x)


def style_terms(clips_a, clips_b) -> dict[str, float]:
    """The five terms of the distance (Lab units) plus `distance` (their mean) and `motion_delta` (apart)."""
    a, b = _stats(clips_a), _stats(clips_b)
    terms = {k: float(np.abs(a.quantiles[k] - b.quantiles[k]).mean()) for k in "Lab"}
    terms["contrast"] = abs(a.contrast - b.contrast)
    terms["saturation"] = abs(a.saturation - b.saturation)
    out = dict(terms)
    out["distance"] = float(np.mean([terms[k] for k in TERMS]))
    out["motion_delta"] = abs(a.motion - b.motion)
    return out


def style_distance(clips_a, clips_b) -> float:
    """Colour/tone distance between two clip sets (or their StyleStats); 0 for identical sets."""
    return style_terms(clips_a, clips_b)["distance"]


def from_model_output(video) -> list[np.ndarray]:
    """Model video [B, F, C, H, W] (torch or numpy) in [-1, 1] -> list of [F, H, W, 3] floats in [0, 1]."""
    arr = video.detach().float().cpu().numpy() if hasattr(video, "detach") else np.asarray(video, np.float32)
    if arr.ndim == 4:
        arr = arr[None]
    return [np.clip((c.transpose(0, 2, 3, 1) + 1) / 2, 0, 1) for c in arr]


def read_video(source: str | Path | bytes | BinaryIO) -> np.ndarray:
    """A video (path, mp4 bytes or binary file object) as uint8 [F, H, W, 3], decoded by reelora.data.video.decode_clip.

    Raises:
        ValueError: not a decodable video or no frames; the message names the file when there is one.
    """
    from reelora.data.video import decode_clip

    if isinstance(source, bytes):
        data, name = source, "video"
    elif hasattr(source, "read"):
        data, name = source.read(), getattr(source, "name", "video")
    else:
        data, name = Path(source).read_bytes(), str(source)
    try:
        frames = decode_clip(data)
    except Exception as exc:  # PyAV's errors on bytes do not know the file's name
        raise ValueError(f"{name}: cannot decode ({type(exc).__name__}: {exc})") from exc
    return np.ascontiguousarray(frames.permute(0, 2, 3, 1).numpy())
