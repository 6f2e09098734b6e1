"""The training loader: batches, exact resume, rank disjointness, workers, epochs."""
from __future__ import annotations

import itertools

import pytest
import torch

from reelora.data.build import build
from reelora.data.loader import ClipLoader, iter_clips
from reelora.data.shards import read_index
from tests.data.conftest import tiny_config, write_library
from tests.media import make_video


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    titles = []
    for i in range(3):
        make_video(d / f"t{i}.mp4", 4, 8, 96, 64, scene_cuts=[2.0], palette_offset=2 * i)
        titles.append({"id": f"t{i}", "path": f"t{i}.mp4", "title": f"T{i}"})
    lib = write_library(d, titles)
    out = d / "out"
    summary = build(lib, out, tiny_config(shard_max_clips=3))
    assert summary.clips == 12 and summary.shards == 4
    return out


def keys(batches):
    return [b["key"] for b in batches]


def test_batches_have_the_training_layout(shards):
    batch = next(iter(ClipLoader(shards, batch_size=2, seed=0)))
    assert batch["frames"].shape == (2, 8, 3, 32, 48)
    assert batch["frames"].dtype == torch.float32
    assert -1.0 <= batch["frames"].min() < 0 < batch["frames"].max() <= 1.0
    assert len(batch["caption"]) == 2 and batch["caption"][0].startswith("tst style, T")
    assert [m["key"] for m in batch["meta"]] == batch["key"]


def test_resume_gives_exactly_the_uninterrupted_batches(shards):
    reference = keys(itertools.islice(ClipLoader(shards, batch_size=2, seed=3, shuffle_buffer=4), 11))
    loader = ClipLoader(shards, batch_size=2, seed=3, shuffle_buffer=4)
    it = iter(loader)
    first = keys(itertools.islice(it, 7))  # 6 batches per epoch: this crosses into epoch 1
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 1
    resumed = ClipLoader(shards, batch_size=2, seed=3, shuffle_buffer=4)
    resumed.load_state_dict(state)
    rest = keys(itertools.islice(resumed, 4))
    assert first + rest == reference
    # the frames themselves match too
    a = next(iter(resumed))["frames"]
    b = list(itertools.islice(ClipLoader(shards, batch_size=2, seed=3, shuffle_buffer=4), 12))[-1]["frames"]
    assert torch.equal(a, b)


def test_epochs_reshuffle_deterministically(shards):
    loader = ClipLoader(shards, batch_size=2, seed=0, shuffle_buffer=8)
    e0, e1 = keys(itertools.islice(loader, 6)), keys(itertools.islice(loader, 6))
    assert sorted(sum(e0, [])) == sorted(sum(e1, []))  # every clip once per epoch
    assert len(set(sum(e0, []))) == 12
    assert e0 != e1
    assert keys(itertools.islice(ClipLoader(shards, batch_size=2, seed=0, shuffle_buffer=8), 6)) == e0
    assert keys(itertools.islice(ClipLoader(shards, batch_size=2, seed=1, shuffle_buffer=8), 6)) != e0


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_clips(shards, world_size):
    per_rank = []
    for rank in range(world_size):
        loader = ClipLoader(shards, batch_size=2, rank=rank, world_size=world_size, seed=5)
        per_rank.append(set(sum(keys(itertools.islice(loader, loader.batches_per_epoch)), [])))
    for a, b in itertools.combinations(per_rank, 2):
        assert not a & b
    assert sum(len(s) for s in per_rank) == (12 // world_size // 2) * 2 * world_size


def test_workers_give_the_same_batches(shards):
    plain = list(itertools.islice(ClipLoader(shards, batch_size=2, seed=2, num_workers=0), 4))
    loader = ClipLoader(shards, batch_size=2, seed=2, num_workers=2)
    workers = list(itertools.islice(loader, 4))
    assert keys(plain) == keys(workers)
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(plain, workers))
    assert loader.state_dict()["batch"] == 4  # prefetched batches are not counted as consumed


def test_state_from_another_setup_is_refused(shards):
    state = ClipLoader(shards, batch_size=2, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        ClipLoader(shards, batch_size=2, rank=0, world_size=3).load_state_dict(state)


def test_iter_clips_walks_every_clip(shards):
    seen = list(iter_clips(shards))
    assert len(seen) == read_index(shards)["num_samples"]
    key, meta, mp4 = seen[0]
    assert meta["key"] == key and mp4[4:8] == b"ftyp"
