"""The training batch order: same-shape chunks of one endless seeded stream, one-integer exact resume."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest

from reelora.train.batches import StreamBatches, epoch_order, shape_chunks

N = 11


def take(sampler: StreamBatches, k: int) -> list[list[int]]:
    return list(itertools.islice(sampler, k))


def old_formula(n, b, seed, rank, world, start, k):
    """The order before shapes were grouped: rank r takes positions g + r*b .. g + r*b + b - 1 of the stream."""
    out, g = [], start
    for _ in range(k):
        first = g + rank * b
        out.append([int(epoch_order(n, seed, p // n)[p % n]) for p in range(first, first + b)])
        g += world * b
    return out


MIXED = [(5, 32, 80), (5, 32, 56), (5, 48, 64), (5, 56, 32)] * 3 + [(5, 32, 80)] * 2  # 14 clips, 4 shapes


@pytest.mark.parametrize("b,world,rank,start", [(2, 1, 0, 0), (3, 2, 1, 6), (2, 3, 2, 18), (4, 1, 0, 40)])
def test_one_shape_is_the_plain_stream(b, world, rank, start):
    sampler = StreamBatches([None] * N, b, seed=7, rank=rank, world=world, start=start)
    assert take(sampler, 9) == old_formula(N, b, 7, rank, world, start, 9)


def test_every_chunk_has_one_shape_and_nothing_is_dropped():
    chunks = list(itertools.islice(shape_chunks(MIXED, 3, seed=1), 40))
    assert all(len({MIXED[i] for i in c}) == 1 and len(c) == 3 for c in chunks)
    counts = Counter(i for c in chunks for i in c)
    # the stream walked so far holds each clip once per epoch; only what still waits in a group is missing
    walked = 120 // len(MIXED)
    assert all(walked - 1 <= n <= walked + 1 for n in counts.values())


def test_ranks_are_disjoint_and_cover_the_global_micro_batch():
    world, b = 3, 2
    ranks = [take(StreamBatches(MIXED, b, seed=2, rank=r, world=world), 5) for r in range(world)]
    single = take(StreamBatches(MIXED, b, seed=2, rank=0, world=1), 5 * world)
    for step in range(5):
        assert [ranks[r][step] for r in range(world)] == single[step * world:(step + 1) * world]
    first_step = [i for r in range(world) for i in ranks[r][0]]
    assert len(set(first_step)) == len(first_step)  # no clip twice in one global micro-batch


def test_world_size_does_not_change_what_is_consumed():
    # 2 ranks x batch b consume the same clips per step as 1 rank taking 2 micro-batches (grad accumulation)
    two = [take(StreamBatches(MIXED, 2, seed=3, rank=r, world=2), 6) for r in range(2)]
    one = take(StreamBatches(MIXED, 2, seed=3, rank=0, world=1), 12)
    assert [c for step in zip(*two) for c in step] == one
    # and with one shape, 1 rank x 2b sees exactly what 2 ranks x b see together
    wide = take(StreamBatches([None] * N, 4, seed=3, rank=0, world=1), 5)
    halves = [take(StreamBatches([None] * N, 2, seed=3, rank=r, world=2), 5) for r in range(2)]
    assert wide == [a + b for a, b in zip(*halves)]


@pytest.mark.parametrize("world_before,world_after", [(1, 1), (2, 2), (2, 1), (1, 4)])
def test_resume_from_one_integer_is_exact(world_before, world_after):
    b, steps = 2, 7
    straight = take(StreamBatches(MIXED, b, seed=4, rank=0, world=1), 20)
    consumed = steps * b * world_before  # what a checkpoint after `steps` steps records
    resumed = [take(StreamBatches(MIXED, b, seed=4, rank=r, world=world_after, start=consumed), 3)
               for r in range(world_after)]
    first = consumed // b
    assert [resumed[r][k] for k in range(3) for r in range(world_after)] == straight[first:first + 3 * world_after]


def test_epochs_reshuffle_and_cover_every_clip():
    e0, e1 = epoch_order(N, 0, 0).tolist(), epoch_order(N, 0, 1).tolist()
    assert sorted(e0) == sorted(e1) == list(range(N)) and e0 != e1
    stream = [i for c in take(StreamBatches([None] * N, 1, seed=0, rank=0, world=1), 2 * N) for i in c]
    assert stream == e0 + e1


def test_start_must_be_whole_batches():
    with pytest.raises(ValueError, match="multiple of batch_size"):
        StreamBatches(MIXED, 2, seed=0, rank=0, world=1, start=3)


def test_workers_decode_the_same_batches(shards):
    import torch

    from reelora.data.shards import ShardSet
    from reelora.train.batches import ClipDataset, batches

    clips = ShardSet(shards).clips
    order = [c.shape for c in clips]
    plain = list(itertools.islice(batches(ClipDataset(clips), StreamBatches(order, 2, 5, 0, 1), 0), 4))
    workers = list(itertools.islice(batches(ClipDataset(clips), StreamBatches(order, 2, 5, 0, 1), 2), 4))
    assert [b["key"] for b in plain] == [b["key"] for b in workers]
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(plain, workers))
    assert plain[0]["frames"].shape == (2, 5, 3, 32, 32)
