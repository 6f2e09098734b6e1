"""Scene split (PySceneDetect), clip windows inside scenes and allowed ranges, content filters, dedup.

Everything here works on the fixed frame grid t_k = k / fps that `video.read_frames` produces, so a
clip is a run of `num_frames` consecutive grid frames [k0, k0 + num_frames) covering the time
[k0 / fps, (k0 + num_frames) / fps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reelora.data.manifest import Range

SIGNATURE_FRAMES = 4
SIGNATURE_SIDE = 16


@dataclass(frozen=True)
class Window:
    """A candidate clip: grid frames [start, start + length)."""

    start: int
    length: int

    def seconds(self, fps: float) -> tuple[float, float]:
        return self.start / fps, (self.start + self.length) / fps


@dataclass(frozen=True)
class Rejected:
    """A stretch of material that did not become a clip, and why (for the audit)."""

    start_s: float
    end_s: float
    reason: str

    def to_dict(self) -> dict:
        return {"start_s": round(self.start_s, 4), "end_s": round(self.end_s, 4), "reason": self.reason}


class SceneCuts:
    """Feed grid frames in order to PySceneDetect's ContentDetector; collect the cut positions."""

    def __init__(self, fps: float, threshold: float = 27.0, min_scene_seconds: float = 0.5):
        from scenedetect import ContentDetector

        self.fps = float(fps)
        # min_scene_len in frames of *our* grid, not the source's
        self._detector = ContentDetector(
            threshold=threshold, min_scene_len=max(1, round(min_scene_seconds * fps))
        )
        self._cuts: list[int] = []
        self._last = -1

    def add(self, k: int, rgb: np.ndarray) -> None:
        from scenedetect import FrameTimecode

        # PySceneDetect expects OpenCV's BGR order
        cuts = self._detector.process_frame(FrameTimecode(k, fps=self.fps), rgb[..., ::-1])
        self._cuts += [c.frame_num for c in cuts]
        self._last = k

    def finish(self) -> list[int]:
        """Grid indices where a new scene starts (0 excluded), sorted and unique."""
        from scenedetect import FrameTimecode

        if self._last >= 0:
            self._cuts += [c.frame_num for c in self._detector.post_process(FrameTimecode(self._last, fps=self.fps))]
        return sorted({c for c in self._cuts if 0 < c <= self._last})


def frame_allowed(
    num_grid: int, fps: float, source_times: np.ndarray, forbidden: list[Range]
) -> tuple[np.ndarray, list[str]]:
    """Which grid frames may be used, and the reason for each that may not.

    A grid frame k is forbidden when its display interval [k/fps, (k+1)/fps) overlaps a forbidden
    range, or when the source frame it shows started inside one (a long source frame can start
    before a range ends and still be on screen at t_k: its content is from the forbidden moment).
    """
    allowed = np.ones(num_grid, bool)
    reasons = [""] * num_grid
    for k in range(num_grid):
        a, b = k / fps, (k + 1) / fps
        src = float(source_times[k]) if k < len(source_times) else a
        for r in forbidden:
            if r.overlaps(a, b) or r.start <= src < r.end:
                allowed[k] = False
                reasons[k] = r.reason
                break
    return allowed, reasons


def plan_windows(
    num_grid: int, cuts: list[int], allowed: np.ndarray, reasons: list[str], num_frames: int, fps: float
) -> tuple[list[Window], list[Rejected]]:
    """Lay clips of exactly `num_frames` grid frames inside scenes and allowed stretches.

    Clips are packed back to back from the start of each allowed stretch of a scene; what is left
    over (shorter than a clip) is reported as too short.
    """
    windows: list[Window] = []
    rejected: list[Rejected] = []
    bounds = [0, *cuts, num_grid]
    for s, e in zip(bounds, bounds[1:]):
        k = s
        while k < e:
            if not allowed[k]:
                j = k
                while j < e and not allowed[j] and reasons[j] == reasons[k]:
                    j += 1
                rejected.append(Rejected(k / fps, j / fps, reasons[k]))
                k = j
                continue
            j = k
            while j < e and allowed[j]:
                j += 1
            n = (j - k) // num_frames
            windows += [Window(k + i * num_frames, num_frames) for i in range(n)]
            leftover = k + n * num_frames
            if leftover < j:
                rejected.append(Rejected(leftover / fps, j / fps,
                                         f"too short: {(j - leftover) / fps:.2f}s left in scene "
                                         f"< {num_frames / fps:.2f}s clip"))
            k = j
    return windows, rejected


# --------------------------------------------------------------------------- content filters


def luma(frames: np.ndarray) -> np.ndarray:
    """Rec.601 luma of RGB uint8 frames [..., 3] as float32."""
    return frames[..., 0] * np.float32(0.299) + frames[..., 1] * np.float32(0.587) + frames[..., 2] * np.float32(0.114)


def content_problem(frames: np.ndarray, black_level: float, black_fraction: float, static_level: float) -> str | None:
    """Why a clip's frames [F, H, W, 3] are not worth training on, or None.

    Black: more than `black_fraction` of the frames have mean luma below `black_level` (0..255).
    Near-static: the mean absolute change between consecutive frames (on a 64-px-wide grey
    thumbnail) is below `static_level` grey levels.
    """
    y = luma(thumbnails(frames, 64))
    dark = (y.reshape(len(y), -1).mean(axis=1) < black_level).mean()
    if dark > black_fraction:
        return f"black: {dark:.0%} of frames below luma {black_level:g}"
    if len(y) > 1:
        motion = float(np.abs(np.diff(y, axis=0)).mean())
        if motion < static_level:
            return f"near-static: mean frame change {motion:.2f} < {static_level:g}"
    return None


def thumbnails(frames: np.ndarray, width: int) -> np.ndarray:
    import cv2

    h, w = frames.shape[1:3]
    height = max(1, round(h * width / w))
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames]).astype(np.float32)


def signature(frames: np.ndarray) -> np.ndarray:
    """A small perceptual fingerprint of a clip: 4 evenly spaced frames as 16x16 grey, uint8.

    Two clips are near-duplicates when their fingerprints differ by little on average; this
    survives re-encoding, rescaling and small crops, and not different moments of a moving shot.
    """
    import cv2

    picks = np.linspace(0, len(frames) - 1, SIGNATURE_FRAMES).round().astype(int)
    grey = [cv2.resize(luma(frames[i].astype(np.float32)), (SIGNATURE_SIDE, SIGNATURE_SIDE),
                       interpolation=cv2.INTER_AREA) for i in picks]
    return np.clip(np.stack(grey).round(), 0, 255).astype(np.uint8).reshape(-1)


class DuplicateIndex:
    """Near-duplicate detection over fingerprints, decided in insertion order (deterministic).

    Every new clip is compared with every kept one (one vectorised pass over a matrix that
    grows by doubling), so a library of 100k clips costs seconds, not a pairwise Python loop.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._matrix = np.zeros((0, SIGNATURE_FRAMES * SIGNATURE_SIDE**2), np.int16)
        self._keys: list[str] = []

    def check_and_add(self, key: str, sig: np.ndarray) -> str | None:
        """Return the key of an earlier near-duplicate, else remember this clip and return None."""
        n = len(self._keys)
        if n and self.threshold >= 0:
            dist = np.abs(self._matrix[:n] - sig.astype(np.int16)).mean(axis=1)
            best = int(np.argmin(dist))
            if dist[best] <= self.threshold:
                return self._keys[best]
        if n == len(self._matrix):
            grown = np.zeros((max(64, 2 * n), self._matrix.shape[1]), np.int16)
            grown[:n] = self._matrix
            self._matrix = grown
        self._matrix[n] = sig
        self._keys.append(key)
        return None
