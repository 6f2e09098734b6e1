"""A procedural "general" video corpus for pretraining the tiny base: shapes, textures, gradients, pans, light.

Every clip is a pure function of (seed, index): clip 7 is the same whether the corpus has 10 or 10,000
clips, in any process, so the base model and its cache key depend only on settings. Captions name what
was drawn (colours, shapes, motion, background, light) so text conditioning has something to learn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Named colours (sRGB 0-1). Captions use these names, so each drawn colour is a jittered copy of one.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "orange": (0.95, 0.50, 0.08), "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.65, 0.20), "teal": (0.05, 0.55, 0.55), "cyan": (0.20, 0.80, 0.90),
    "blue": (0.10, 0.25, 0.85), "purple": (0.50, 0.15, 0.70), "pink": (0.95, 0.45, 0.70),
    "brown": (0.45, 0.28, 0.12), "white": (0.95, 0.95, 0.92), "black": (0.06, 0.06, 0.07),
    "gray": (0.50, 0.50, 0.50), "navy": (0.05, 0.08, 0.35), "olive": (0.45, 0.48, 0.10),
    "beige": (0.85, 0.78, 0.60), "lime": (0.60, 0.85, 0.15), "sky": (0.55, 0.75, 0.95),
    "grey-blue": (0.55, 0.60, 0.70), "dark green": (0.08, 0.30, 0.12),
}
# Palettes group colours that appear together, so the corpus has distinct "looks" (warm, cold, pastel...).
PALETTES: dict[str, tuple[str, ...]] = {
    "warm": ("red", "orange", "yellow", "brown", "beige", "pink"),
    "cool": ("blue", "cyan", "teal", "navy", "purple", "white", "grey-blue"),
    "forest": ("green", "olive", "brown", "beige", "lime", "dark green"),
    "outdoor": ("sky", "lime", "green", "grey-blue", "white", "brown"),
    "neon": ("pink", "cyan", "yellow", "green", "purple", "black"),
    "mono": ("black", "gray", "white", "beige", "navy"),
    "sunset": ("orange", "pink", "purple", "navy", "red", "yellow"),
    "any": tuple(COLOURS),
}
SHAPES = ("circle", "square", "triangle", "ring", "bar")
BACKGROUNDS = ("plain", "gradient", "radial", "stripes", "checker", "clouds")
LIGHTS = ("bright", "normal", "dim", "fading", "brightening", "vignette")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
              "up and left": (-0.7, -0.7), "down and right": (0.7, 0.7), "nowhere": (0, 0)}


@dataclass(frozen=True)
class CorpusSettings:
    """What defines the corpus (and so part of the base model's cache key)."""

    seed: int = 0
    num_frames: int = 5
    """Frames per clip; Wan's causal VAE wants 1 + k * temporal factor (5 or 9 for the tiny VAE)."""
    height: int = 32
    width: int = 32
    supersample: int = 2
    """Render at this multiple and box-filter down: anti-aliased edges like real footage."""


def clip(settings: CorpusSettings, index: int) -> tuple[np.ndarray, str]:
    """Clip `index` of the corpus: (frames [F, H, W, 3] float32 in [0, 1], caption)."""
    rng = np.random.default_rng([settings.seed, index])
    s = settings.supersample
    F, H, W = settings.num_frames, settings.height * s, settings.width * s
    palette_name = rng.choice(list(PALETTES))
    palette = PALETTES[palette_name]

    def pick() -> tuple[str, np.ndarray]:
        name = str(rng.choice(palette))
        jitter = rng.normal(0, 0.06, 3)
        return name, np.clip(np.array(COLOURS[name]) + jitter, 0, 1).astype(np.float32)

    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    yy, xx = yy / H, xx / W  # [0, 1) image coordinates
    t = np.arange(F, dtype=np.float32) / max(F - 1, 1)  # [0, 1] over the clip

    # Background, with an optional camera pan (the background texture translates over time).
    bg_kind = str(rng.choice(BACKGROUNDS))
    (c1n, c1), (c2n, c2) = pick(), pick()
    for _ in range(8):  # two different names, so "black and black clouds" never happens
        if c2n != c1n:
            break
        c2n, c2 = pick()
    pan_name = str(rng.choice(["", "", "left", "right", "up", "down"]))
    pan = np.array(DIRECTIONS.get(pan_name, (0, 0)), np.float32) * rng.uniform(0.15, 0.4)
    frames = np.empty((F, H, W, 3), np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    freq = rng.uniform(2.0, 5.0)
    waves = rng.normal(0, 1, (4, 4))  # low-frequency "clouds"
    for f in range(F):
        # Camera moving in +dx shows content further right: the image shifts by -dx.
        x, y = xx + pan[0] * t[f], yy + pan[1] * t[f]
        if bg_kind == "plain":
            m = np.zeros_like(x)
        elif bg_kind == "gradient":
            m = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)
        elif bg_kind == "radial":
            m = np.clip(np.hypot(x - 0.5, y - 0.5) * 1.6, 0, 1)
        elif bg_kind == "stripes":
            m = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle))))
        elif bg_kind == "checker":
            m = ((np.floor(x * freq) + np.floor(y * freq)) % 2).astype(np.float32)
        else:  # clouds: a few random low-frequency sinusoids
            m = sum(waves[i, 0] * np.sin(2 * np.pi * (waves[i, 1] * x + waves[i, 2] * y) + waves[i, 3]) for i in range(4))
            m = 1 / (1 + np.exp(-1.5 * m))
        frames[f] = c1 * (1 - m[..., None]) + c2 * m[..., None]

    # Foreground shapes moving in straight lines.
    n_shapes = int(rng.choice([0, 1, 1, 2, 2, 3]))
    shape_words = []
    for _ in range(n_shapes):
        kind = str(rng.choice(SHAPES))
        cn, col = pick()
        dname = str(rng.choice(list(DIRECTIONS)))
        d = np.array(DIRECTIONS[dname], np.float32) * rng.uniform(0.2, 0.5)
        r = rng.uniform(0.10, 0.25)
        c0 = rng.uniform(0.25, 0.75, 2).astype(np.float32) - d / 2
        for f in range(F):
            cx, cy = c0 + d * t[f]
            dx, dy = xx - cx, yy - cy
            if kind == "circle":
                mask = dx * dx + dy * dy < r * r
            elif kind == "ring":
                rr = dx * dx + dy * dy
                mask = (rr < r * r) & (rr > (0.6 * r) ** 2)
            elif kind == "square":
                mask = (np.abs(dx) < r * 0.85) & (np.abs(dy) < r * 0.85)
            elif kind == "triangle":
                mask = (dy < r * 0.8) & (dy > -r) & (np.abs(dx) < (dy + r) * 0.6)
            else:  # bar
                mask = (np.abs(dx) < r * 1.4) & (np.abs(dy) < r * 0.35)
            frames[f][mask] = col
        motion = "still" if dname == "nowhere" else f"moving {dname}"
        shape_words.append(f"a {cn} {kind} {motion}")

    # Lighting: global gain, a fade, or a vignette.
    light = str(rng.choice(LIGHTS))
    gain = {"bright": 1.25, "dim": 0.55}.get(light, 1.0)
    frames *= gain
    if light in ("fading", "brightening"):
        ramp = 1.0 - 0.6 * t if light == "fading" else 0.4 + 0.6 * t
        frames *= ramp[:, None, None, None]
    elif light == "vignette":
        frames *= np.clip(1.2 - 1.4 * np.hypot(xx - 0.5, yy - 0.5), 0.2, 1)[None, ..., None]
    frames = np.clip(frames, 0, 1)
    if s > 1:
        frames = frames.reshape(F, H // s, s, W // s, s, 3).mean(axis=(2, 4))

    bg_words = {
        "plain": f"a plain {c1n} background", "gradient": f"a {c1n} to {c2n} gradient",
        "radial": f"a {c1n} centre fading to {c2n}", "stripes": f"{c1n} and {c2n} stripes",
        "checker": f"a {c1n} and {c2n} checkerboard", "clouds": f"{c1n} and {c2n} clouds",
    }[bg_kind]
    parts = [" and ".join(shape_words) + " over " + bg_words if shape_words else bg_words]
    if pan_name:
        parts.append(f"camera panning {pan_name}")
    if light != "normal":
        parts.append(f"{light} light")
    parts.append(f"{palette_name} palette")
    return frames.astype(np.float32), ", ".join(parts)


def corpus(settings: CorpusSettings, count: int, start: int = 0) -> tuple[np.ndarray, list[str]]:
    """Clips start..start+count-1: (frames [N, F, H, W, 3] float32 in [0, 1], captions)."""
    clips, captions = zip(*(clip(settings, i) for i in range(start, start + count))) if count else ((), ())
    shape = (0, settings.num_frames, settings.height, settings.width, 3)
    return (np.stack(clips) if clips else np.zeros(shape, np.float32)), list(captions)


def to_model_input(frames: np.ndarray):
    """[N, F, H, W, 3] in [0, 1] (numpy) -> torch [N, F, 3, H, W] in [-1, 1], as specs' encode_video takes."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3) * 2 - 1
