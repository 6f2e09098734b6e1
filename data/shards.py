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

Paths from data (the policy): media and caption paths in a library manifest are read wherever its
author put them (absolute, `..`: a library often lives on another volume), and are never written or
deleted. Every other name that comes from a document (title ids from the manifest, `--title`, index,
audit or work files; shard names in index.json; keys inside tars) goes through `check_title_id`,
`check_shard_name` / `inside`, or the KEY pattern before it becomes a path: one plain file name, no
separators, no `..`, and, symlinks resolved, inside the folder it names. So everything we write or
delete stays inside the shard directory.

What a reader checks (the cost): index.json and audit.json are refused over `MAX_JSON_BYTES` before
parsing; `ShardSet` compares each shard's sample count, keys (in order) and byte size with the index
when it opens a set (one scan of the tar headers, no data read), and `ClipRef.read` compares each
clip's mp4 with the `clip_sha256` its metadata records (one sha256 per clip read, about 1 GB/s, small
next to decoding it). A mismatch raises `ShardError` naming the shard file and key. `reelora shards
verify` hashes every shard and the audit files against the index (reads the whole set).

Writes are all-or-nothing per set: a build or takedown writes its new shards, audit and index into
`OUT/.incoming/`, then `commit_incoming` renames them into place, index.json last (it records the
audit files' sha256), and deletes the shards the new index no longer lists. A failure before the
renames (disk full) leaves the old set untouched; a crash during them leaves shards that disagree with
the old index, which `ShardSet` and `verify` report (and a rerun repairs).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from reelora.data.manifest import TITLE_ID
from reelora.files import atomic_write, sha256_bytes, sha256_file, write_json_atomic
from reelora.safeyaml import short_repr

INDEX = "index.json"
FORMAT = "reelora-shards/1"
INCOMING = ".incoming"  # where a build or takedown writes its new files before `commit_incoming`
_MTIME = 0  # fixed tar member time: reproducible shards
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.tar$")
"""A shard's name in index.json: one plain file name ending in .tar (the builder writes shard-NNNNNN.tar)."""
KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")
"""A sample key (tar member KEY.EXT): no dots (webdataset splits there), no separators."""
MAX_JSON_BYTES = 256 * 2**20
"""Largest index.json / audit.json read (a million clips' keys and shapes take about 100 MB)."""

__all__ = ["INDEX", "FORMAT", "INCOMING", "SHARD_NAME", "KEY", "MAX_JSON_BYTES", "ShardError", "inside",
           "check_title_id", "check_shard_name", "read_json_bounded", "read_index", "write_index",
           "write_shard", "read_shard_samples", "begin_incoming", "commit_incoming", "tar_members", "Member",
           "ClipRef", "ShardSet", "decode_frames", "iter_clips"]


class ShardError(RuntimeError):
    """A shard directory is missing, damaged or inconsistent; the message names the file (and config key)."""


# --------------------------------------------------------------------------- names from data -> paths


def inside(folder: str | Path, name: str, what: str, follow_links: bool = True) -> Path:
    """`folder / name`, checked: `name` is one plain file name, and the path (symlinks resolved) stays in `folder`.

    Every path built from a name read from data (index, audit, work files, command line) goes through here.

    Args:
        follow_links: False for a path only renamed over or unlinked (that acts on a link, not its target).
    Raises:
        ShardError: `what` and the offending name.
    """
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
            or (os.altsep and os.altsep in name)):
        raise ShardError(f"{what}: {short_repr(name)} is not a plain file name (no separators, not '..')")
    path = Path(folder) / name
    if not follow_links:
        return path
    base = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([base, real]) != base or real == base:
        raise ShardError(f"{what}: {path} resolves to {real}, outside {base}")
    return path


def check_title_id(title_id: str, what: str = "title id") -> str:
    """`title_id` if it is a valid manifest title id (1-64 letters, digits, '_' or '-'), else ShardError."""
    if not isinstance(title_id, str) or not TITLE_ID.match(title_id):
        raise ShardError(f"{what}: {short_repr(title_id)} is not a title id (1-64 letters, digits, '_' or '-', "
                         "starting with a letter or digit)")
    return title_id


def check_shard_name(name: str, what: str) -> str:
    """`name` if it is a plain shard file name (SHARD_NAME), else ShardError."""
    if not isinstance(name, str) or not SHARD_NAME.match(name):
        raise ShardError(f"{what}: shard name {short_repr(name)} is not a plain NAME.tar file name")
    return name


def read_json_bounded(path: Path, what: str, max_bytes: int | None = None):
    """Parse a JSON file no bigger than `max_bytes` (default MAX_JSON_BYTES; checked before reading).

    Raises:
        OSError (unreadable), ValueError (too big, not JSON): the caller adds its context.
    """
    max_bytes = max_bytes or MAX_JSON_BYTES
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{size} bytes, more than the {max_bytes} a {what} may have")
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- index.json


def read_index(directory: str | Path, what: str | None = None) -> dict:
    """Parse and check `DIRECTORY/index.json`; `what` (e.g. a config key) prefixes error messages.

    Raises:
        ShardError: missing, unreadable, another format, or no list of shards with names.
    """
    path = Path(directory) / INDEX
    where = f"{what}: {path}" if what else str(path)
    try:
        index = read_json_bounded(path, "shard index")
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
    seen = set()
    for s in shards:
        check_shard_name(s["name"], where)
        if s["name"] in seen:
            raise ShardError(f"{where}: shard {s['name']} is listed twice")
        seen.add(s["name"])
        keys = s.get("keys")
        if keys is not None:
            if not isinstance(keys, list) or not all(isinstance(k, str) and KEY.match(k) for k in keys):
                raise ShardError(f"{where}: shard {s['name']}: 'keys' must list plain sample keys")
            if "num_samples" in s and len(keys) != s["num_samples"]:
                raise ShardError(f"{where}: shard {s['name']} lists {len(keys)} keys but num_samples {s['num_samples']}")
    return index


def write_index(directory: str | Path, entries: list[dict], fields: dict | None = None) -> dict:
    """Write `DIRECTORY/index.json` (atomically): shard `entries` (from `write_shard`) plus other `fields`.

    Written last by every writer: its presence means the set is complete. A build or takedown writes it
    into `begin_incoming`'s folder and `commit_incoming` puts it in place.
    """
    index = {**(fields or {}), "format": FORMAT, "shards": entries,
             "num_samples": sum(e["num_samples"] for e in entries)}
    write_json_atomic(Path(directory) / INDEX, index)
    return index


@contextmanager
def begin_incoming(directory: Path) -> Iterator[Path]:
    """An empty `DIRECTORY/.incoming/` for a writer's new files; removed again if the writer fails."""
    incoming = directory / INCOMING
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    try:
        yield incoming
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise


def commit_incoming(directory: Path, incoming: Path, old_names: set[str] = frozenset()) -> None:
    """Move every file of `incoming` into `directory`, index.json last; then delete the shards in
    `old_names` (and stale shard-NNNNNN.tar files) that the new index does not list.

    Renames only (no data written), so a full disk cannot stop it halfway.
    """
    new_index = read_index(incoming)
    listed = {s["name"] for s in new_index["shards"]}
    moves = [(incoming / p.name, inside(directory, p.name, "commit", follow_links=False))
             for p in sorted(incoming.iterdir()) if p.name != INDEX]  # every name checked before the first move
    stale = set(old_names) | {p.name for p in directory.glob("shard-*.tar") if re.fullmatch(r"shard-\d{6}\.tar", p.name)}
    stale_paths = [inside(directory, check_shard_name(n, "stale shard"), "stale shard", follow_links=False)
                   for n in sorted(stale - listed)]
    for src, dst in moves:
        os.replace(src, dst)
    os.replace(incoming / INDEX, directory / INDEX)
    for path in stale_paths:
        path.unlink(missing_ok=True)
    shutil.rmtree(incoming, ignore_errors=True)


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
        ShardError: a member that is not a plain KEY.EXT file.
    """
    samples: dict[str, dict[str, Member]] = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if not KEY.match(key) or not ext:
                raise ShardError(f"shard {path}: member {short_repr(m.name)} is not a plain KEY.EXT sample file")
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
        """The bytes of KEY.EXT (opened per call, so clips cross into DataLoader workers freely).

        The mp4 is checked against the `clip_sha256` its metadata records (one sha256 per read,
        about 1 GB/s: small next to decoding the clip).

        Raises:
            ShardError: naming the shard and key, if the bytes are short or the mp4 hash differs.
        """
        m = self.members[ext]
        try:
            with open(self.shard, "rb") as f:
                f.seek(m.offset)
                data = f.read(m.size)
        except OSError as exc:
            raise ShardError(f"shard {self.shard}: cannot read {self.key}.{ext} ({exc.strerror or exc})") from exc
        if len(data) != m.size:
            raise ShardError(f"shard {self.shard}: {self.key}.{ext} is cut short ({len(data)} of {m.size} bytes)")
        expected = self.meta.get("clip_sha256") if ext == "mp4" else None
        if expected and sha256_bytes(data) != expected:
            raise ShardError(f"shard {self.shard}: {self.key}.mp4 does not match its clip_sha256 (damaged shard; "
                             "rebuild it or restore it from a copy, `reelora shards verify` lists the damaged ones)")
        return data

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


RIGHTS_KEYS = ("license", "rights_holder", "rights_expires")
"""The rights fields every clip's metadata carries (data/manifest.py `rights_record`)."""


class ShardSet:
    """The clips of the shards listed in DIRECTORY/index.json, in index order, indexed by tar offsets.

    Args:
        directory: a shard directory.
        what: how error messages name it (a config key such as "data.shards", or a CLI flag).

    Opening checks each shard against its index entry: sample count, keys in order and byte size (tar
    headers only, no clip data read); each clip's hash is checked when it is read (`ClipRef.read`).

    Raises:
        ShardError: no directory, no or a bad index, a listed shard missing, outside the directory or
            unreadable, a sample without its .mp4, sample counts, keys or sizes that differ from the
            index, or no clips at all.
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
            path = inside(d, entry["name"], f"{what}: {d / INDEX}")
            if not path.is_file():
                raise ShardError(f"{what}: shard {path} is listed in {d / INDEX} but missing")
            clips = _index_tar(path, entry)
            if "num_samples" in entry and len(clips) != entry["num_samples"]:
                raise ShardError(f"{what}: {path} holds {len(clips)} samples but {INDEX} says {entry['num_samples']}")
            keys = [c.key for c in clips]
            if "keys" in entry and keys != entry["keys"]:
                first = next(i for i, (a, b) in enumerate(zip(keys, entry["keys"])) if a != b)
                raise ShardError(f"{what}: {path} holds sample {keys[first]!r} where {INDEX} lists "
                                 f"{entry['keys'][first]!r} (shard and index disagree)")
            if "bytes" in entry and path.stat().st_size != entry["bytes"]:
                raise ShardError(f"{what}: {path} is {path.stat().st_size} bytes but {INDEX} says {entry['bytes']} "
                                 "(damaged or replaced shard)")
            self.shards.append(path)
            self.clips.extend(clips)
        if not self.clips:
            raise ShardError(f"{what}: {d} holds no clips (empty dataset)")

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def titles(self) -> list[str]:
        return sorted({str(c.meta["title_id"]) for c in self.clips if "title_id" in c.meta})

    @property
    def rights(self) -> dict[str, dict]:
        """Title id -> the rights its clips carry (license, rights_holder, rights_expires; None where unrecorded).

        Every clip of a title carries the same record from library.yaml; should hand-made shards disagree,
        the distinct values are joined with " / " rather than one picked.
        """
        seen: dict[str, dict[str, set]] = {}
        for c in self.clips:
            if "title_id" in c.meta:
                rec = seen.setdefault(str(c.meta["title_id"]), {k: set() for k in RIGHTS_KEYS})
                for k in RIGHTS_KEYS:
                    if c.meta.get(k) is not None:
                        rec[k].add(str(c.meta[k]))
        return {t: {k: " / ".join(sorted(v)) or None for k, v in rec.items()} for t, rec in sorted(seen.items())}

    @property
    def trigger(self) -> str | None:
        """The library's trigger word, which the build put first in every caption (index.json `library.trigger`)."""
        library = self.index.get("library")
        return (library.get("trigger") or None) if isinstance(library, dict) else None


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
