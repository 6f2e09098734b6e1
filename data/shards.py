"""The shard format: the one place that writes and reads `reelora shards build` output.

Layout of a shard directory::

    OUT/shard-000000.tar ...   # per clip: KEY.mp4 (H.264), KEY.json (metadata), KEY.jpg (thumbnail)
    OUT/index.json             # shards + sha256 + sample counts + keys + shapes, build settings, takedowns

`write_shard` writes one tar (webdataset's TarWriter, fixed member mtime, so the same samples give the same
bytes) and returns its index entry; `write_index` writes index.json. `ShardSet` reads a directory: every
clip by byte offset inside its tar (webdataset wids' IndexedTarSamples idea: scan the tar headers once,
then random access), its metadata, and its (frames, height, width) shape from the index, which is what
the training batch order groups by. Every reader in the project (training, cache, report, research,
benchmarks) goes through it; the builder (`assemble`), the audit and the takedown write through it.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from reelora.files import atomic_write, sha256_bytes, sha256_file, write_json_atomic

INDEX = "index.json"
FORMAT = "reelora-shards/1"
_MTIME = 0  # fixed tar member time: reproducible shards

__all__ = ["INDEX", "FORMAT", "ShardError", "read_index", "write_index", "write_shard", "read_shard_samples",
           "tar_members", "Member", "ClipRef", "ShardSet", "decode_frames", "iter_clips"]


class ShardError(RuntimeError):
    """A shard directory is missing, damaged or inconsistent; the message names the file (and config key)."""


# --------------------------------------------------------------------------- index.json


def read_index(directory: str | Path, what: str | None = None) -> dict:
    """Parse and check `DIRECTORY/index.json`; `what` (e.g. a config key) prefixes error messages.

    Raises:
        ShardError: missing, unreadable, another format, or no list of shards with names.
    """
    path = Path(directory) / INDEX
    where = f"{what}: {path}" if what else str(path)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{where}: no shard index here (build shards with `reelora shards build`)") from None
    except (OSError, ValueError) as exc:
        raise ShardError(f"{where}: unreadable shard index ({type(exc).__name__}: {exc})") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ShardError(f"{where}: format {found!r} is not {FORMAT!r}")
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "name" in s for s in shards):
        raise ShardError(f"{where}: is not a shard index ('shards' must list entries with a 'name')")
    return index


def write_index(directory: str | Path, entries: list[dict], fields: dict | None = None) -> dict:
    """Write `DIRECTORY/index.json` (atomically): shard `entries` (from `write_shard`) plus other `fields`.

    Written last by every writer: its presence means the set is complete.
    """
    index = {**(fields or {}), "format": FORMAT, "shards": entries,
             "num_samples": sum(e["num_samples"] for e in entries)}
    write_json_atomic(Path(directory) / INDEX, index)
    return index


# --------------------------------------------------------------------------- tars


def write_shard(path: Path, samples: list[dict]) -> dict:
    """Write samples ({"__key__", "mp4", "json", ["jpg"]}) with webdataset's TarWriter (atomically).

    Returns:
        the shard's index entry: name, sha256, bytes, num_samples, titles (clips per title), keys and
        shapes ([frames, height, width] per key: what the training order batches by).
    """
    import webdataset as wds

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=_MTIME) as writer:
            for sample in samples:
                writer.write(sample)

    atomic_write(path, write)
    titles: dict[str, int] = {}
    shapes = []
    for s in samples:
        meta = json.loads(s["json"])
        titles[meta["title_id"]] = titles.get(meta["title_id"], 0) + 1
        shapes.append([meta["num_frames"], meta["height"], meta["width"]])
    return {
        "name": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "num_samples": len(samples),
        "titles": titles,
        "keys": [s["__key__"] for s in samples],
        "shapes": shapes,
    }


@dataclass(frozen=True)
class Member:
    """Where one file of a sample lies inside its tar."""

    offset: int
    size: int


def tar_members(path: str | Path) -> dict[str, dict[str, Member]]:
    """Every sample of a WebDataset tar, in tar order: key -> {extension: where its bytes are}.

    Raises:
        OSError / tarfile.TarError: an unreadable file (callers name their context).
    """
    samples: dict[str, dict[str, Member]] = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.rsplit("/", 1)[-1].partition(".")
            samples.setdefault(key, {})[ext] = Member(m.offset_data, m.size)
    return samples


def read_shard_samples(path: Path) -> list[dict]:
    """All samples of one shard as {"__key__", ext: bytes}, in tar order (for rewriting a shard)."""
    out = []
    with open(path, "rb") as f:
        for key, members in tar_members(path).items():
            sample = {"__key__": key}
            for ext, m in members.items():
                f.seek(m.offset)
                sample[ext] = f.read(m.size)
            out.append(sample)
    return out


# --------------------------------------------------------------------------- reading clips


@dataclass
class ClipRef:
    """One clip of a shard set: where its files are in which tar, its metadata (KEY.json) and shape."""

    key: str
    shard: str
    members: dict[str, Member]
    meta: dict = field(default_factory=dict)
    shape: tuple | None = None  # (frames, height, width): clips of one shape can share a batch

    @property
    def caption(self) -> str:
        return str(self.meta.get("caption", ""))

    def read(self, ext: str = "mp4") -> bytes:
        """The bytes of KEY.EXT (opened per call, so clips cross into DataLoader workers freely)."""
        m = self.members[ext]
        with open(self.shard, "rb") as f:
            f.seek(m.offset)
            return f.read(m.size)

    def sha256(self) -> str:
        """The clip's content hash (from its metadata when the shard builder recorded it)."""
        return self.meta.get("clip_sha256") or sha256_bytes(self.read("mp4"))


def decode_frames(clip: ClipRef):
    """Decode a clip to float frames [F, C, H, W] in [-1, 1] (torch).

    Raises:
        ShardError: naming the clip and its shard.
    """
    from reelora.data.video import decode_clip

    try:
        return decode_clip(clip.read("mp4"), dtype="float")
    except Exception as exc:
        raise ShardError(f"clip {clip.key} in {clip.shard}: cannot decode ({type(exc).__name__}: {exc})") from exc


class ShardSet:
    """The clips of the shards listed in DIRECTORY/index.json, in index order, indexed by tar offsets.

    Args:
        directory: a shard directory.
        what: how error messages name it (a config key such as "data.shards", or a CLI flag).

    Raises:
        ShardError: no directory, no or a bad index, a listed shard missing or unreadable, a sample
            without its .mp4, sample counts that differ from the index, or no clips at all.
    """

    def __init__(self, directory: str | Path, what: str = "shards"):
        d = Path(directory)
        if not d.is_dir():
            raise ShardError(f"{what}: shard directory {str(d)!r} does not exist")
        self.directory = str(d)  # a str: it goes into adapter lineage as is
        self.index = read_index(d, what)
        self.index_sha256 = sha256_file(d / INDEX)
        self.shards: list[Path] = []
        self.clips: list[ClipRef] = []
        for entry in self.index["shards"]:
            path = d / entry["name"]
            if not path.is_file():
                raise ShardError(f"{what}: shard {path} is listed in {d / INDEX} but missing")
            clips = _index_tar(path, entry)
            if "num_samples" in entry and len(clips) != entry["num_samples"]:
                raise ShardError(f"{what}: {path} holds {len(clips)} samples but {INDEX} says {entry['num_samples']}")
            self.shards.append(path)
            self.clips.extend(clips)
        if not self.clips:
            raise ShardError(f"{what}: {d} holds no clips (empty dataset)")

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def titles(self) -> list[str]:
        return sorted({str(c.meta["title_id"]) for c in self.clips if "title_id" in c.meta})


def _index_tar(path: Path, entry: dict) -> list[ClipRef]:
    shapes = dict(zip(entry.get("keys", []), entry.get("shapes", [])))
    clips = []
    try:
        samples = tar_members(path)
        with open(path, "rb") as f:
            for key, members in samples.items():
                if "mp4" not in members:
                    raise ShardError(f"shard {path}: sample {key!r} has no .mp4")
                meta = {}
                if "json" in members:
                    f.seek(members["json"].offset)
                    meta = json.loads(f.read(members["json"].size))
                shape = shapes.get(key)
                if shape is None and all(k in meta for k in ("num_frames", "height", "width")):
                    shape = (meta["num_frames"], meta["height"], meta["width"])  # a hand-written index
                clips.append(ClipRef(key, str(path), members, meta, tuple(shape) if shape is not None else None))
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise ShardError(f"shard {path}: unreadable ({type(exc).__name__}: {exc})") from exc
    return clips


def iter_clips(directory: str | Path) -> Iterator[tuple[str, dict, bytes]]:
    """Every clip of a shard set in index order as (key, meta, mp4 bytes), one in memory at a time."""
    for clip in ShardSet(directory).clips:
        yield clip.key, clip.meta, clip.read("mp4")
