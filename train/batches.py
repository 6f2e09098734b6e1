"""The training batch order, the dataset over clips (decoded frames or cached latents), and collate.

Training reads clips by random access (reelora.data.shards.ShardSet: tar member offsets), so the data
position is just "how many samples the run has consumed": the order is a fixed permutation per epoch
drawn from `train.seed`, grouped into same-shape chunks, and rank r of W takes chunk r of each global
micro-batch. Resume therefore needs one integer, and it stays exact with a different number of processes.
"""
from __future__ import annotations

import hashlib
import itertools
from typing import Hashable, Iterator, Sequence

import torch

from reelora.data.shards import ClipRef, decode_frames


class DataError(RuntimeError):
    """Latent/text cache problems; the message names the directory, file or key (shard problems: ShardError)."""


# ---------------------------------------------------------------------------------------------------------
# Order


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of clip indices 0..n-1 that epoch `epoch` walks."""
    g = torch.Generator().manual_seed(mix_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=g)


def mix_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes and Python runs, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shape_chunks(shapes: Sequence[Hashable], batch_size: int, seed: int) -> Iterator[list[int]]:
    """The endless global sequence of chunks: `batch_size` clip indices of one shape each.

    Walks the stream (epoch 0's permutation, then epoch 1's, ...) keeping one pending group per shape
    and emits a group when it fills. Leftovers carry over into the next epoch, so no clip is dropped
    and clips of different sizes (aspect buckets) never share a batch. With one shape the chunks are
    simply consecutive blocks of `batch_size` stream positions.
    """
    pending: dict[Hashable, list[int]] = {}
    for epoch in itertools.count():
        for i in epoch_order(len(shapes), seed, epoch).tolist():
            group = pending.setdefault(shapes[i], [])
            group.append(i)
            if len(group) == batch_size:
                yield group
                pending[shapes[i]] = []


class StreamBatches:
    """Yields index lists: the micro-batches of rank `rank`, starting at global sample `start`.

    The global stream is `shape_chunks`; each global micro-batch holds `world` consecutive chunks and
    rank r takes the r-th, so the chunks consumed up to any position do not depend on the world size.
    `start` (samples consumed, a multiple of batch_size) is reached by walking the chunks from the
    beginning: about 0.2 s per million samples (measured on CPU), paid once when a run resumes.

    Args:
        shapes: one hashable shape per clip (e.g. ClipRef.shape); clips of equal shape may share a batch.
    """

    def __init__(self, shapes: Sequence[Hashable], batch_size: int, seed: int, rank: int, world: int, start: int = 0):
        if start % batch_size:
            raise ValueError(f"StreamBatches: start {start} is not a multiple of batch_size {batch_size}")
        self.shapes, self.b, self.seed, self.rank, self.world, self.start = list(shapes), batch_size, seed, rank, world, start

    def __iter__(self) -> Iterator[list[int]]:
        first = self.start // self.b + self.rank
        return itertools.islice(shape_chunks(self.shapes, self.b, self.seed), first, None, self.world)


# ---------------------------------------------------------------------------------------------------------
# Dataset


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over clips: cached latents + text embeddings, or decoded frames."""

    def __init__(self, clips: list[ClipRef], cache=None):
        self.clips, self.cache = clips, cache

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        item = {"key": clip.key, "caption": clip.caption}
        if self.cache is None:
            item["frames"] = decode_frames(clip)
        else:
            try:
                item["latents"] = self.cache.load_latents(clip)
                item["text"] = self.cache.load_text(clip.caption, clip.key)
            except DataError as exc:  # carried to the main process as text: see `batches`
                item["error"] = str(exc)
        return item


def collate(items: list[dict]) -> dict:
    errors = [it["error"] for it in items if "error" in it]
    if errors:
        return {"error": errors[0]}
    out = {"key": [it["key"] for it in items], "caption": [it["caption"] for it in items]}
    if "frames" in items[0]:
        out["frames"] = torch.stack([it["frames"] for it in items])
    else:
        out["latents"] = torch.stack([it["latents"] for it in items])
        out["text"] = {k: torch.stack([it["text"][k] for it in items]) for k in items[0]["text"]}
    return out


def batches(dataset: ClipDataset, sampler: StreamBatches, num_workers: int):
    """An endless iterator of collated micro-batches for this rank.

    Raises:
        DataError: a damaged cache entry, with the message the dataset wrote (a worker's own exception
            would reach the main process wrapped in the worker's traceback text).
    """
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
        persistent_workers=False, prefetch_factor=2 if num_workers else None,
    )
    for batch in loader:
        if "error" in batch:
            raise DataError(batch["error"])
        yield batch
