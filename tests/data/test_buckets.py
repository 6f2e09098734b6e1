"""Aspect-ratio buckets: each title gets the nearest bucket; batches never mix sizes."""
from __future__ import annotations

import itertools

import pytest

from reelora.data.build import BuildConfig, build
from reelora.data.loader import ClipLoader
from tests.data.conftest import shard_metas, tiny_config, write_library
from tests.media import make_video


def test_size_for_picks_the_nearest_aspect():
    cfg = BuildConfig(buckets="480x832, 832x480,624x624")
    assert cfg.size_for(1920, 1080) == (480, 832)
    assert cfg.size_for(1080, 1920) == (832, 480)
    assert cfg.size_for(1000, 1100) == (624, 624)
    assert BuildConfig().size_for(1080, 1920) == (480, 832)  # no buckets: always --height x --width
    with pytest.raises(ValueError, match="buckets='48x3O'"):
        BuildConfig(buckets="48x3O")


def test_buckets_end_to_end(tmp_path):
    for name, (w, h), offset in [("wide", (96, 64), 0), ("tall", (64, 96), 3), ("square", (64, 64), 5)]:
        make_video(tmp_path / f"{name}.mp4", 4, 8, w, h, palette_offset=offset)
    lib = write_library(tmp_path, [{"id": n, "path": f"{n}.mp4"} for n in ("wide", "tall", "square")])
    out = tmp_path / "out"
    build(lib, out, tiny_config(buckets="32x48,48x32,40x40", shard_max_clips=5))
    sizes = {(m["title_id"], m["height"], m["width"]) for m in shard_metas(out)}
    assert sizes == {("wide", 32, 48), ("tall", 48, 32), ("square", 40, 40)}
    loader = ClipLoader(out, batch_size=3, world_size=2, rank=0, seed=1, shuffle_buffer=6)
    other = ClipLoader(out, batch_size=3, world_size=2, rank=1, seed=1, shuffle_buffer=6)
    assert loader.batches_per_epoch == other.batches_per_epoch > 0
    for batch in itertools.islice(loader, loader.batches_per_epoch):
        titles = {m["title_id"] for m in batch["meta"]}
        assert len(titles) == 1, titles  # one size per batch (each title has its own bucket here)
        assert batch["frames"].shape[0] == 3
