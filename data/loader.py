"""Training-side reader of clip shards: deterministic, rank-split, shuffled, exactly resumable.

The order of an epoch is a pure function of (seed, epoch, the shard index): shards are permuted
per epoch and streamed through a shuffle buffer driven by a seeded generator, then rank r takes
every world_size-th clip starting at r (disjoint across ranks, equal counts). Because the order
is computed from the tar *headers* alone, resuming never replays data: the position is just
(epoch, batches consumed), and `load_state_dict` jumps straight there.

    loader = ClipLoader("shards/", batch_size=2, rank=rank, world_size=world, seed=0)
    for step, batch in zip(range(max_steps), loader):   # loops over epochs forever
        batch["frames"]  # float32 [B, F, C, H, W] in [-1, 1]
        ...
        ckpt["data"] = loader.state_dict()
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from reelora.data.shards import ShardError, read_index
from reelora.data.video import decode_clip

__all__ = ["ClipLoader", "ShardSet", "decode_clip", "iter_clips"]


@dataclass(frozen=True)
class Member:
    offset: int
    size: int


def tar_members(path: str | Path) -> dict[str, dict[str, Member]]:
    """Every sample of a WebDataset tar, in tar order: key -> {extension: where its bytes are}.

    Reading members by offset afterwards gives random access without re-scanning; the training reader
    uses this too. Raises OSError / tarfile.TarError for an unreadable file (callers name their context).
    """
    samples: dict[str, dict[str, Member]] = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.rsplit("/", 1)[-1].partition(".")
            samples.setdefault(key, {})[ext] = Member(m.offset_data, m.size)
    return samples


class ShardSet:
    """Random access to the samples of the shards listed in `DIR/index.json`, via tar headers."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        self.shards: list[Path] = []
        self.keys: list[list[str]] = []  # per shard, in tar order
        self.shapes: dict[tuple[int, str], tuple] = {}  # (shard, key) -> (frames, height, width)
        self._members: dict[tuple[int, str], dict[str, Member]] = {}
        for i, entry in enumerate(self.index["shards"]):
            path = self.directory / entry["name"]
            keys = self._scan(i, path)
            if len(keys) != entry["num_samples"]:
                raise ShardError(f"{path}: holds {len(keys)} samples but index.json says {entry['num_samples']}")
            self.shards.append(path)
            self.keys.append(keys)
            for key, shape in zip(entry.get("keys", []), entry.get("shapes", [])):
                self.shapes[(i, key)] = tuple(shape)
        self._files: dict[int, Any] = {}

    def _scan(self, shard: int, path: Path) -> list[str]:
        try:
            samples = tar_members(path)
        except (OSError, tarfile.TarError) as exc:
            raise ShardError(f"{path}: unreadable shard: {exc}") from exc
        for key, members in samples.items():
            self._members[(shard, key)] = members
        return list(samples)

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys)

    def read(self, shard: int, key: str, ext: str) -> bytes:
        member = self._members[(shard, key)][ext]
        f = self._files.get(shard)
        if f is None:  # opened lazily so each DataLoader worker has its own handles
            f = self._files[shard] = open(self.shards[shard], "rb")
        f.seek(member.offset)
        return f.read(member.size)

    def sample(self, shard: int, key: str) -> dict:
        """One clip: frames float [F, C, H, W] in [-1, 1], caption, key, meta (KEY.json)."""
        meta = json.loads(self.read(shard, key, "json"))
        frames = decode_clip(self.read(shard, key, "mp4"), dtype="float")
        return {"frames": frames, "caption": meta.get("caption", ""), "key": key, "meta": meta}

    def __getstate__(self):  # file handles don't cross process boundaries
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


def iter_clips(directory: str | Path) -> Iterator[tuple[str, dict, bytes]]:
    """Every clip of a shard set in index order as (key, meta, mp4 bytes): for caching passes."""
    shards = ShardSet(directory)
    for s, keys in enumerate(shards.keys):
        for key in keys:
            yield key, json.loads(shards.read(s, key, "json")), shards.read(s, key, "mp4")


def epoch_order(keys_per_shard: list[list[str]], seed: int, epoch: int, shuffle_buffer: int) -> list[tuple[int, str]]:
    """The global clip order of one epoch: permuted shards through a seeded shuffle buffer."""
    rng = np.random.default_rng([seed, epoch])
    stream = [(int(s), k) for s in rng.permutation(len(keys_per_shard)) for k in keys_per_shard[s]]
    if shuffle_buffer <= 1:
        return stream
    out, buffer = [], []
    for item in stream:
        if len(buffer) < shuffle_buffer:
            buffer.append(item)
            continue
        i = int(rng.integers(len(buffer)))
        out.append(buffer[i])
        buffer[i] = item
    rng.shuffle(buffer)
    return out + buffer


class _Batches:
    """Map-style dataset of the batches of one epoch (what DataLoader workers decode)."""

    def __init__(self, shards: ShardSet, batches: list[list[tuple[int, str]]]):
        self.shards, self.batches = shards, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        import torch

        samples = [self.shards.sample(s, k) for s, k in self.batches[i]]
        shapes = {tuple(x["frames"].shape) for x in samples}
        if len(shapes) > 1:
            raise ShardError(f"{self.shards.directory}: clips of one batch differ in shape {sorted(shapes)}")
        return {
            "frames": torch.stack([x["frames"] for x in samples]),
            "caption": [x["caption"] for x in samples],
            "key": [x["key"] for x in samples],
            "meta": [x["meta"] for x in samples],
        }


def _identity(x):
    return x


class ClipLoader:
    """Endless, resumable batches of clips for one rank.

    Args:
        shard_dir: directory with index.json and the shard tars.
        batch_size: clips per batch (incomplete batches at an epoch's end are dropped, so every
            rank sees the same number of equal-sized batches).
        rank, world_size: this process's place among data-parallel ranks.
        seed: the order is a function of (seed, epoch) only.
        shuffle_buffer: size of the streaming shuffle buffer (<= 1: shard order only).
        num_workers: DataLoader worker processes decoding batches (0 = in this process).
    """

    def __init__(self, shard_dir: str | Path, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle_buffer: int = 64, num_workers: int = 0):
        if batch_size < 1:
            raise ValueError(f"ClipLoader: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"ClipLoader: rank {rank} not in [0, world_size={world_size})")
        self.shards = ShardSet(shard_dir)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle_buffer, self.num_workers = seed, shuffle_buffer, num_workers
        per_rank = len(self.shards) // world_size
        if per_rank < batch_size:
            raise ValueError(
                f"{shard_dir}: {len(self.shards)} clips give {per_rank} per rank for world_size="
                f"{world_size}, fewer than batch_size={batch_size}"
            )
        self.epoch = 0
        self.batch = 0  # batches of `epoch` already handed out

    @property
    def batches_per_epoch(self) -> int:
        """Batches of the current epoch (the same every epoch unless clips come in several sizes)."""
        return len(self.epoch_batches(self.epoch))

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, str]]]:
        """This rank's batches of `epoch` as lists of (shard, key).

        Clips of different sizes (aspect buckets) never share a batch: each size fills its own
        batch in stream order. Every rank computes every rank's batches and all keep the smallest
        count, so data-parallel ranks always run the same number of steps.
        """
        order = epoch_order(self.shards.keys, self.seed, epoch, self.shuffle_buffer)
        usable = order[: len(order) - len(order) % self.world_size]
        per_rank = [self._bucket_batches(usable[r :: self.world_size]) for r in range(self.world_size)]
        count = min(len(b) for b in per_rank)
        return per_rank[self.rank][:count]

    def _bucket_batches(self, refs: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
        batches, pending = [], {}
        for ref in refs:
            group = pending.setdefault(self.shards.shapes.get(ref), [])
            group.append(ref)
            if len(group) == self.batch_size:
                batches.append(group)
                pending[self.shards.shapes.get(ref)] = []
        return batches

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import DataLoader

        while True:
            batches = self.epoch_batches(self.epoch)
            if not batches:
                raise ValueError(f"{self.shards.directory}: epoch {self.epoch} has no full batch of "
                                 f"{self.batch_size} same-sized clips for rank {self.rank}")
            batches = batches[self.batch :]
            dataset = _Batches(self.shards, batches)
            if self.num_workers > 0:
                source = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
                                    collate_fn=_identity, prefetch_factor=2)
            else:
                source = (dataset[i] for i in range(len(dataset)))
            for batch in source:
                # advance before yielding: a checkpoint taken after using this batch resumes after it
                self.batch += 1
                yield batch
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size,
                "shuffle_buffer": self.shuffle_buffer, "num_samples": len(self.shards)}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position; the batches that follow are those an uninterrupted run gets.

        Raises:
            ValueError: the state comes from a loader with another seed/rank/world_size/batch
                size/shuffle buffer or another shard set (its order would differ).
        """
        for name in ("seed", "rank", "world_size", "batch_size", "shuffle_buffer", "num_samples"):
            mine = len(self.shards) if name == "num_samples" else getattr(self, name)
            if name in state and state[name] != mine:
                raise ValueError(f"ClipLoader.load_state_dict: saved {name}={state[name]} but this loader has {mine}")
        if not 0 <= state["batch"] <= self.batches_per_epoch:
            raise ValueError(f"ClipLoader.load_state_dict: batch {state['batch']} outside epoch of {self.batches_per_epoch}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
