"""Video I/O: probe in a subprocess, decode resampled by timestamps, encode clips to H.264.

decord is fast but can segfault or hang on bad media, so every file is first probed by a child
process (`python -m reelora.data.video probe FILE`) under a timeout; a file decord can't open
is decoded with PyAV instead, and a file neither can read is quarantined with the reason.

Frames are always resampled onto a fixed grid t_k = k / fps by *timestamp*: the frame shown at t_k
is the last source frame whose presentation time is <= t_k. That is what a player shows, and it
keeps variable-frame-rate sources in sync with wall-clock time (indexing frames would not).
Rotation metadata is honoured (decord applies it; for PyAV we rotate by `frame.rotation`).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

# Timestamps within this much of a grid point count as "at" it (float noise in container pts).
_EPS = 1e-4


class MediaError(RuntimeError):
    """A media file can't be used; the message says why (it becomes the quarantine reason)."""


@dataclass(frozen=True)
class ProbeInfo:
    """What the probe learnt about a file."""

    path: str
    width: int
    """Display width (after rotation)."""
    height: int
    """Display height (after rotation)."""
    duration: float
    """Seconds from the first frame to the end of the last."""
    fps: float
    """Average frame rate of the source."""
    num_frames: int
    codec: str
    pix_fmt: str
    rotation: int
    """Display rotation in degrees (counter-clockwise) from the container's display matrix."""
    decoder: str
    """"decord" or "pyav": which decoder reads this file."""
    declared_duration: float = 0.0
    """Duration the container header claims (more than `duration` for a truncated file)."""
    decord_error: str = ""
    """Why decord was not chosen, when it wasn't."""

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- probing


def check_readable(path: Path) -> None:
    """Cheap checks done before spawning a probe.

    Raises:
        MediaError: missing, not a regular file, zero bytes or unreadable.
    """
    if not path.exists():
        if path.is_symlink():
            raise MediaError("missing file (broken symlink)")
        raise MediaError("missing file")
    if not path.is_file():
        raise MediaError("not a regular file (is it a directory?)")
    if path.stat().st_size == 0:
        raise MediaError("zero-byte file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise MediaError(f"unreadable: {exc.strerror or exc}") from exc


def probe(path: str | Path, timeout: float = 60.0) -> ProbeInfo:
    """Probe a media file in a child process (decord/ffmpeg crashes and hangs stay there).

    Raises:
        MediaError: the file is missing, empty, unreadable, not a video, has no decodable video
            stream, or the probe crashed or timed out.
    """
    path = Path(path)
    check_readable(path)
    cmd = [sys.executable, "-m", "reelora.data.video", "probe", str(path)]
    env = dict(os.environ, DECORD_LOG_LEVEL="quiet", AV_LOG_LEVEL="quiet")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"probe timed out after {timeout:.0f}s (decoder hang?)") from exc
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    pyav = next((l for l in lines if l.get("stage") == "pyav"), None)
    dec = next((l for l in lines if l.get("stage") == "decord"), None)
    if pyav is None:
        raise MediaError(_crash_reason(proc, "probe"))
    if "error" in pyav:
        raise MediaError(pyav["error"])
    info = dict(pyav["info"])
    if dec is None:
        # the child died inside decord: PyAV can still read the file
        info.update(decoder="pyav", decord_error=_crash_reason(proc, "decord"))
    elif "error" in dec:
        info.update(decoder="pyav", decord_error=dec["error"])
    else:
        info.update(decoder="decord")
    return ProbeInfo(path=str(path), **info)


def _crash_reason(proc: subprocess.CompletedProcess, what: str) -> str:
    if proc.returncode < 0:
        return f"{what} crashed (signal {-proc.returncode})"
    tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
    return f"{what} failed (exit {proc.returncode}): {tail[0][:200]}"


def _probe_child(path: str) -> None:
    """Runs in the probe subprocess: print one JSON line for PyAV, then one for decord."""
    import av

    def emit(obj: dict) -> None:
        print(json.dumps(obj), flush=True)

    try:
        with av.open(path) as container:
            if not container.streams.video:
                kind = "audio only" if container.streams.audio else "no streams"
                emit({"stage": "pyav", "error": f"no video stream ({kind})"})
                return
            stream = container.streams.video[0]
            first = None
            for frame in container.decode(stream):
                first = frame
                break
            if first is None:
                emit({"stage": "pyav", "error": "video stream has no decodable frames"})
                return
            rotation = int(first.rotation or 0) % 360
            w, h = first.width, first.height
            if rotation in (90, 270):
                w, h = h, w
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            # Demux (no decoding) to count the packets really there: headers of truncated files
            # promise more than the file holds, and decord then invents the missing frames.
            packets, span = _demux_count(container, stream)
            if packets == 0:
                emit({"stage": "pyav", "error": "video stream has no packets"})
                return
            declared = duration
            if span is not None and (not duration or span < duration):
                duration = span
            info = {
                "width": w,
                "height": h,
                "duration": float(duration or 0.0),
                "declared_duration": float(declared or 0.0),
                "fps": float(rate) if rate else 0.0,
                "num_frames": packets,
                "codec": stream.codec_context.name,
                "pix_fmt": str(stream.codec_context.pix_fmt),
                "rotation": rotation,
            }
            emit({"stage": "pyav", "info": info})
    except Exception as exc:  # any ffmpeg error means "not a usable video"
        emit({"stage": "pyav", "error": f"not a readable video: {type(exc).__name__}: {exc}"[:300]})
        return

    try:
        import decord

        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr)
        if n == 0:
            raise RuntimeError("decord sees no frames")
        if n > info["num_frames"] + 1:
            raise RuntimeError(f"decord counts {n} frames but the file holds {info['num_frames']} "
                               "(truncated or broken index)")
        vr.get_frame_timestamp(list(range(n)))
        vr[0]
        vr[n - 1]  # a truncated file fails here rather than halfway through a build
        emit({"stage": "decord", "frames": n})
    except Exception as exc:
        emit({"stage": "decord", "error": f"{type(exc).__name__}: {exc}"[:300]})


def _demux_count(container, stream) -> tuple[int, float | None]:
    """(packets of `stream`, seconds from the first packet's start to the end of the last one).

    Packets without a duration (AVI, some raw streams) are given the median spacing of the
    packet timestamps, which is what they are shown for.
    """
    import av

    count, starts, ends = 0, [], []
    container.seek(0)
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            count += 1
            if packet.pts is not None and packet.time_base is not None:
                t0 = float(packet.pts * packet.time_base)
                starts.append(t0)
                ends.append(t0 + float(packet.duration * packet.time_base) if packet.duration else None)
    except av.error.FFmpegError:
        pass  # a truncated file ends here; what was read counts
    if not starts:
        return count, None
    gaps = np.diff(np.unique(starts))
    typical = float(np.median(gaps)) if len(gaps) else 0.0
    end = max(e if e is not None else s + typical for s, e in zip(starts, ends))
    return count, end - min(starts)


# --------------------------------------------------------------------------- decoding


@dataclass
class DecodeReport:
    """Problems met while decoding a file that was still partly usable."""

    stopped_at: float | None = None
    """Seconds where decoding stopped early (truncated or corrupt file), if it did."""
    error: str = ""


def grid_size(info: ProbeInfo, fps: float) -> int:
    """How many grid frames t_k = k / fps fit in the source duration."""
    return max(0, int(np.floor(info.duration * fps + _EPS)))


def read_frames(
    info: ProbeInfo,
    fps: float,
    indices: Iterable[int],
    transform: Callable[[np.ndarray], np.ndarray],
    report: DecodeReport | None = None,
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield (k, source_time, transform(frame)) for the grid frames t_k = k / fps asked for.

    `indices` must be increasing. `source_time` is the presentation time of the source frame
    shown at t_k (the last one with pts <= t_k), relative to the first frame. Frames are RGB
    uint8 HxWx3 upright. A file that stops decoding early ends the iteration and fills `report`.
    """
    wanted = [int(k) for k in indices]
    if any(b <= a for a, b in zip(wanted, wanted[1:])):
        raise ValueError("read_frames: indices must be strictly increasing")
    if info.decoder == "decord":
        yield from _read_decord(info, fps, wanted, transform, report)
    else:
        yield from _read_pyav(info, fps, wanted, transform, report)


# One decoding thread, always. On a file with damaged bytes, frame-threaded decoding (decord's and
# FFmpeg's) conceals errors differently with the thread count, and differently from run to run: the
# clips then depended on --workers and the machine (measured: 1, 2, 8 and 16 threads gave 4 different
# frame sets from one damaged file; 1 thread gave the same every time, in both decoders). Titles are
# decoded in parallel instead (--workers).
_DECODE_THREADS = 1


def _read_decord(info, fps, wanted, transform, report):
    import bisect

    import decord

    vr = decord.VideoReader(info.path, num_threads=_DECODE_THREADS)
    starts = vr.get_frame_timestamp(list(range(len(vr))))[:, 0].astype(np.float64)
    starts -= starts[0]
    keyframes = sorted(int(i) for i in vr.get_key_indices())
    targets = np.asarray(wanted, np.float64) / fps
    src = np.clip(np.searchsorted(starts, targets + _EPS, side="right") - 1, 0, len(starts) - 1)
    # Read forward with next()/skip_frames(): far faster than get_batch()'s per-call seeking.
    # Jump with an accurate seek only when a keyframe lies between here and the next frame.
    pos, last = 0, None  # pos: index next() returns; last: (index, converted frame)
    for k, j in zip(wanted, src.tolist()):
        if last is None or last[0] != j:
            try:
                kf = keyframes[bisect.bisect_right(keyframes, j) - 1] if keyframes else 0
                if kf > pos:
                    vr.seek_accurate(j)
                elif j > pos:
                    vr.skip_frames(j - pos)
                frame = vr.next().asnumpy()
            except Exception as exc:  # decord lost its footing mid-file: keep what we have
                if report is not None:
                    report.stopped_at, report.error = float(k / fps), f"decord: {exc}"[:300]
                return
            pos = j + 1
            last = (j, transform(frame))
        yield k, round(float(starts[j]), 6), last[1]


def _read_pyav(info, fps, wanted, transform, report):
    import av

    if not wanted:
        return
    pos = 0  # next position in `wanted`
    prev = None  # (time, frame) of the last decoded frame
    first_time = None
    try:
        with av.open(info.path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = _DECODE_THREADS
            for frame in container.decode(stream):
                t = frame.time
                if t is None:  # no pts: assume constant rate after the previous frame
                    t = (prev[0] + first_time + 1.0 / max(info.fps, 1.0)) if prev else 0.0
                if first_time is None:
                    first_time = t
                t -= first_time
                # every grid point before this frame's time shows the previous frame
                while prev is not None and pos < len(wanted) and wanted[pos] / fps < t - _EPS:
                    yield wanted[pos], round(prev[0], 6), transform(_to_rgb(prev[1]))
                    pos += 1
                if pos >= len(wanted):
                    return
                prev = (t, frame)
    except (av.error.FFmpegError, OSError) as exc:
        if report is not None:
            report.stopped_at = prev[0] if prev else 0.0
            report.error = f"pyav: {exc}"[:300]
        return
    # the last frame lasts one frame period; grid points after that are past the end
    if prev is not None:
        end = prev[0] + 1.0 / max(info.fps, 1.0)
        while pos < len(wanted) and wanted[pos] / fps < end - _EPS:
            yield wanted[pos], round(prev[0], 6), transform(_to_rgb(prev[1]))
            pos += 1


def _to_rgb(frame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    rotation = int(frame.rotation or 0) % 360
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


# --------------------------------------------------------------------------- resize


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled so the longer side is at most `max_side`, aspect ratio kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing), cubic when enlarging.

    Large reductions halve first: OpenCV's exact-2x area path is several times faster than one
    fractional area resize, and the result is visually the same.
    """
    import cv2

    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    while w >= 2 * width and h >= 2 * height:
        frame = cv2.resize(frame, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        h, w = frame.shape[:2]
    shrink = width <= w and height <= h
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def resize_center_crop(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale so the frame covers width x height, then crop the centre (no letterboxing)."""
    h, w = frame.shape[:2]
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    resized = resize(frame, new_w, new_h)
    x, y = (new_w - width) // 2, (new_h - height) // 2
    return np.ascontiguousarray(resized[y : y + height, x : x + width])


# --------------------------------------------------------------------------- clip codec


def encode_clip(frames: np.ndarray, fps: float, crf: int = 18, preset: str = "medium") -> bytes:
    """Encode RGB uint8 frames [F, H, W, 3] as an H.264 mp4 (yuv420p), byte-for-byte reproducible.

    One encoder thread and bitexact flags: the bytes depend only on the frames and settings, not
    on the machine's core count or the library's version string, so shard hashes are stable.
    """
    import av

    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"encode_clip: H.264 yuv420p needs even sizes, got {w}x{h}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        # x264's output depends on its thread count, and the "threads" option set through stream.options is
        # not honoured by PyAV: set it on the codec context (one thread: bytes independent of the machine).
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_clip(data: bytes, dtype: str = "uint8"):
    """Decode one clip's mp4 bytes to a torch tensor [F, C, H, W].

    Args:
        data: the KEY.mp4 bytes from a shard.
        dtype: "uint8" (0..255) or "float" (float32 in [-1, 1], what the models take).
    """
    import av
    import torch

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [_to_rgb(f) for f in container.decode(stream)]
    if not frames:
        raise MediaError("clip has no decodable frames")
    array = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    if dtype == "uint8":
        return array.contiguous()
    if dtype == "float":
        # layout change and conversion in one pass, then scale in place
        return array.to(torch.float32, memory_format=torch.contiguous_format).mul_(1 / 127.5).sub_(1.0)
    raise ValueError(f"decode_clip: dtype must be 'uint8' or 'float', got {dtype!r}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        _probe_child(sys.argv[2])
    else:
        sys.exit("usage: python -m reelora.data.video probe FILE")
