"""Writing sampled clips: H.264 mp4 with provenance in the container metadata and a signed C2PA manifest
(models/credentials.py), and a contact sheet PNG."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from reelora.models.credentials import SigningKey

import numpy as np

# mp4 tags: `comment` is shown by most players and tools; the namespaced tag is the one to parse.
PROVENANCE_TAG = "reelora_provenance"
X264_THREADS = 1


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] (what diffusers returns for output_type='np') -> uint8 [F, H, W, 3]."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, provenance: dict | None = None, crf: int = 12,
              sign: "bool | SigningKey" = True) -> Path:
    """Encode uint8 frames [F, H, W, 3] as H.264 (yuv420p) mp4 with PyAV; provenance goes into the tags.

    Odd widths/heights are padded by one edge pixel because yuv420p needs even sizes. Written atomically:
    a failed write (full disk) leaves no half clip at `path`.

    Args:
        sign: embed a C2PA manifest for generated media (models/credentials.py) signed with this key; True
            takes `credentials.resolve_signing_key()` (REELORA_SIGN_CERT/KEY, else the development
            certificate); False writes none (for footage that is not generated). The provenance gets a
            `content_credentials` entry naming the signer unless it has one.
    """
    from reelora.files import atomic_write

    path = Path(path)
    frames = to_uint8(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: expected frames shaped [F, H, W, 3], got {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    key = None
    if sign is not False:
        from reelora.models import credentials

        key = credentials.resolve_signing_key() if sign is True else sign
        provenance = dict(provenance or {})
        provenance.setdefault("content_credentials", key.describe())

    def encode(tmp: Path) -> None:
        _encode_in_child(tmp, frames, fps, crf, provenance)

    def write(tmp: Path) -> None:
        if key is None:
            return encode(tmp)
        from reelora.models import credentials

        plain = tmp.with_name(tmp.name + ".unsigned")
        try:
            encode(plain)
            credentials.sign_mp4(plain, tmp, provenance, key, title=str(provenance.get("prompt", path.stem))[:200])
        finally:
            plain.unlink(missing_ok=True)

    return atomic_write(path, write)


def _encode_in_child(path: Path, frames: np.ndarray, fps: float, crf: int, provenance: dict | None) -> None:
    """Encode in a fresh `python -m reelora.models.media` process.

    In the process that just ran the model, the same frames gave different x264 bytes from one process to the
    next (decoded frames up to 11/255 apart) with one encoder thread, the same options and the same YUV input;
    a process that only encodes gives the same bytes whatever ran before it or its environment, so clips are
    reproducible to the bit (tests/models/test_reproducible.py). Costs one short process per clip.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".encode-") as tmp:
        raw = Path(tmp) / "frames.npy"
        np.save(raw, frames)
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"frames": str(raw), "out": str(path), "fps": fps, "crf": crf,
                                   "provenance": provenance}), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "reelora.models.media", str(job)], capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"{path}: encoding the clip failed: {done.stderr.strip()[-2000:]}")


def _encode(path: Path, frames: np.ndarray, fps: float, crf: int, provenance: dict | None) -> None:
    import av
    from fractions import Fraction

    # movflags=use_metadata_tags lets mp4 carry our own tag names, not just the iTunes set.
    with av.open(str(path), "w", format="mp4", options={"movflags": "use_metadata_tags"}) as container:
        if provenance is not None:
            text = json.dumps(provenance, sort_keys=True, separators=(",", ":"))
            container.metadata[PROVENANCE_TAG] = text
            container.metadata["comment"] = text
            container.metadata["title"] = str(provenance.get("prompt", ""))[:200]
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # x264's output depends on its thread count, which it otherwise takes from the CPUs this process may
        # use (measured: auto, 1, 3 and 4 threads gave four different files), and a "threads" entry in
        # stream.options is not honoured by PyAV: set on the codec context, as data/video.py's encode_clip does.
        stream.options = {"crf": str(crf), "preset": "medium"}
        stream.codec_context.thread_count = X264_THREADS
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_mp4(path: str | Path) -> tuple[np.ndarray, dict]:
    """Decode an mp4 to uint8 [F, H, W, 3] and return its container tags (for tests and review tools).

    The frames come from the one clip decoder, `reelora.data.video.decode_clip`.
    """
    import av

    from reelora.data.video import decode_clip

    with av.open(str(path)) as container:
        tags = dict(container.metadata)
    frames = decode_clip(Path(path).read_bytes()).permute(0, 2, 3, 1).numpy()
    return frames, tags


def read_provenance(path: str | Path) -> dict:
    """The provenance JSON written into an mp4 by `write_mp4`."""
    import av

    with av.open(str(path)) as container:
        text = container.metadata.get(PROVENANCE_TAG)
    if text is None:
        raise ValueError(f"{path}: no {PROVENANCE_TAG!r} tag in the mp4 metadata")
    return json.loads(text)


def contact_sheet(path: str | Path, clips: Sequence[tuple[str, np.ndarray]], frames_per_row: int = 8,
                  min_height: int = 96) -> Path:
    """One row per clip: its label, then `frames_per_row` frames sampled evenly in time.

    Small frames are enlarged (nearest neighbour, so tiny-model pixels stay visible) to `min_height`.
    """
    from PIL import Image, ImageDraw

    if not clips:
        raise ValueError(f"{path}: no clips for the contact sheet")
    label_h, gap = 16, 4
    rows = []
    for label, frames in clips:
        frames = to_uint8(np.asarray(frames))
        idx = np.linspace(0, len(frames) - 1, num=min(frames_per_row, len(frames))).round().astype(int)
        h, w = frames.shape[1:3]
        zoom = max(1, int(np.ceil(min_height / h)))
        tiles = [Image.fromarray(frames[i]).resize((w * zoom, h * zoom), Image.NEAREST) for i in idx]
        row = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), label_h + tiles[0].height), "white")
        ImageDraw.Draw(row).text((2, 2), label[:160], fill="black")
        x = 0
        for t in tiles:
            row.paste(t, (x, label_h))
            x += t.width + gap
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + gap * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + gap
    path = Path(path)
    sheet.save(path)
    return path


if __name__ == "__main__":  # the encoder process of _encode_in_child
    _job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    _encode(Path(_job["out"]), np.load(_job["frames"]), _job["fps"], _job["crf"], _job["provenance"])
