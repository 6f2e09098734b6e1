"""Training data: clips indexed by byte offset inside the shard tars, read in a seeded order.

Training reads clips by random access (tar member offsets) instead of streaming, so the data position
is just "how many samples the run has consumed": the order is a fixed permutation per epoch drawn from
`train.seed`, and rank r of W takes its slice of each global micro-batch. Resume therefore needs one
integer, and it stays exact even with a different number of processes.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

INDEX = "index.json"


class DataError(RuntimeError):
    """Missing/empty shards or cache problems; the message names the directory, file or key."""


@dataclass
class Clip:
    """One training sample in a shard: where its bytes are and its metadata (the KEY.json)."""

    key: str
    shard: str
    mp4_offset: int
    mp4_size: int
    meta: dict = field(default_factory=dict)

    @property
    def caption(self) -> str:
        return str(self.meta.get("caption", ""))

    def read_mp4(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.mp4_offset)
            return f.read(self.mp4_size)

    def sha256(self) -> str:
        """The clip's content hash (from its metadata when the shard builder recorded it)."""
        return self.meta.get("clip_sha256") or hashlib.sha256(self.read_mp4()).hexdigest()


@dataclass
class ShardSet:
    """A shard directory's clips, in index order, plus what lineage needs."""

    directory: str
    clips: list[Clip]
    index_sha256: str

    @property
    def titles(self) -> list[str]:
        return sorted({str(c.meta["title_id"]) for c in self.clips if "title_id" in c.meta})


def open_shards(directory: str | Path, what: str = "data.shards") -> ShardSet:
    """Index every clip of the shards listed in DIRECTORY/index.json.

    Raises:
        DataError: no directory, no index, a listed shard missing, or no clips at all.
    """
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{what}: shard directory {str(d)!r} does not exist")
    index_path = d / INDEX
    if not index_path.is_file():
        raise DataError(f"{what}: {index_path} not found (build shards with `reelora shards build`)")
    raw = index_path.read_bytes()
    try:
        index = json.loads(raw)
        names = [s["name"] for s in index["shards"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{what}: {index_path} is not a shard index ({type(exc).__name__}: {exc})") from exc
    clips: list[Clip] = []
    for name in names:
        path = d / name
        if not path.is_file():
            raise DataError(f"{what}: shard {path} is listed in {index_path} but missing")
        clips.extend(_index_tar(path))
    if not clips:
        raise DataError(f"{what}: {d} holds no clips (empty dataset)")
    return ShardSet(str(d), clips, hashlib.sha256(raw).hexdigest())


def _index_tar(path: Path) -> list[Clip]:
    from reelora.data.loader import tar_members

    clips = []
    try:
        samples = tar_members(path)
        with open(path, "rb") as f:
            for key, members in samples.items():
                if "mp4" not in members:
                    raise DataError(f"shard {path}: sample {key!r} has no .mp4")
                meta = {}
                if "json" in members:
                    f.seek(members["json"].offset)
                    meta = json.loads(f.read(members["json"].size))
                clips.append(Clip(key, str(path), members["mp4"].offset, members["mp4"].size, meta=meta))
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise DataError(f"shard {path}: unreadable ({type(exc).__name__}: {exc})") from exc
    return clips


def decode_frames(clip: Clip) -> torch.Tensor:
    """Decode a clip to float frames [F, C, H, W] in [-1, 1] (reelora.data's decoder)."""
    from reelora.data.video import decode_clip

    try:
        return decode_clip(clip.read_mp4(), dtype="float")
    except Exception as exc:
        raise DataError(f"clip {clip.key} in {clip.shard}: cannot decode ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------------------------------------------------
# Order


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(mix_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=g)


def mix_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes and Python runs, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class StreamBatches:
    """Yields index lists: the micro-batches of rank `rank`, starting at global sample `start`.

    The global stream is epoch 0's permutation, then epoch 1's, ...; each global micro-batch holds
    `world * batch_size` consecutive positions and rank r takes the r-th block of `batch_size`.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int, start: int = 0):
        self.n, self.b, self.seed, self.rank, self.world, self.start = n, batch_size, seed, rank, world, start
        self._orders: dict[int, torch.Tensor] = {}

    def position(self, g: int) -> int:
        epoch, i = divmod(g, self.n)
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.n, self.seed, epoch)}
        return int(self._orders[epoch][i])

    def __iter__(self):
        g = self.start
        while True:
            first = g + self.rank * self.b
            yield [self.position(first + j) for j in range(self.b)]
            g += self.world * self.b


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over clips: cached latents + text embeddings, or decoded frames."""

    def __init__(self, clips: list[Clip], cache=None):
        self.clips, self.cache = clips, cache

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        item = {"key": clip.key, "caption": clip.caption}
        if self.cache is None:
            item["frames"] = decode_frames(clip)
        else:
            item["latents"] = self.cache.load_latents(clip)
            item["text"] = self.cache.load_text(clip.caption)
        return item


def collate(items: list[dict]) -> dict:
    out = {"key": [it["key"] for it in items], "caption": [it["caption"] for it in items]}
    if "frames" in items[0]:
        out["frames"] = torch.stack([it["frames"] for it in items])
    else:
        out["latents"] = torch.stack([it["latents"] for it in items])
        out["text"] = {k: torch.stack([it["text"][k] for it in items]) for k in items[0]["text"]}
    return out


def batches(dataset: ClipDataset, sampler: StreamBatches, num_workers: int):
    """An endless iterator of collated micro-batches for this rank."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
        persistent_workers=False, prefetch_factor=2 if num_workers else None,
    )
    return iter(loader)
