"""Aspect-ratio buckets: each title gets the nearest bucket, batches never mix sizes, bucketed shards train."""
from __future__ import annotations

import itertools
import json

import pytest

from reelora.cli import main as reelora_main
from reelora.data.config import BuildConfig
from reelora.data.shards import ShardSet, read_index
from reelora.train.batches import StreamBatches
from tests.data.conftest import shard_metas, write_library
from tests.media import make_video

# 2.39:1 scope, 16:9, 4:3 and 9:16 portrait sources; buckets sized for tiny-wan (sides multiples of 8)
SOURCES = {"scope": (96, 40), "hd": (96, 54), "tv": (64, 48), "portrait": (54, 96)}
BUCKETS = "32x80,32x56,48x64,56x32"


def test_size_for_picks_the_nearest_aspect():
    cfg = BuildConfig(buckets="480x832, 832x480,624x624")
    assert cfg.size_for(1920, 1080) == (480, 832)
    assert cfg.size_for(1080, 1920) == (832, 480)
    assert cfg.size_for(1000, 1100) == (624, 624)
    assert BuildConfig().size_for(1080, 1920) == (480, 832)  # no buckets: always --height x --width
    with pytest.raises(ValueError, match="buckets='48x3O'"):
        BuildConfig(buckets="48x3O")


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory):
    d = tmp_path_factory.mktemp("buckets")
    for i, (name, (w, h)) in enumerate(SOURCES.items()):
        make_video(d / f"{name}.mp4", 3, 8, w, h, palette_offset=2 * i)
    lib = write_library(d, [{"id": name, "path": f"{name}.mp4"} for name in SOURCES])
    out = d / "out"
    assert reelora_main(["shards", "build", str(lib), "--out", str(out), "--buckets", BUCKETS, "--num-frames", "5",
                         "--fps", "8", "--preset", "ultrafast", "--as-of", "2026-01-01", "--shard-max-clips", "4",
                         "--scene-detector", "pyscenedetect"]) == 0  # shots don't matter here: the cheap detector
    return out


def test_each_title_gets_its_bucket_and_the_index_records_it(bucketed):
    sizes = {(m["title_id"], m["height"], m["width"]) for m in shard_metas(bucketed)}
    assert sizes == {("scope", 32, 80), ("hd", 32, 56), ("tv", 48, 64), ("portrait", 56, 32)}
    shapes = {tuple(s) for entry in read_index(bucketed)["shards"] for s in entry["shapes"]}
    assert shapes == {(5, 32, 80), (5, 32, 56), (5, 48, 64), (5, 56, 32)}


def test_training_order_never_mixes_buckets(bucketed):
    clips = ShardSet(bucketed).clips
    shapes = [c.shape for c in clips]
    for rank in range(2):
        for chunk in itertools.islice(StreamBatches(shapes, 3, seed=1, rank=rank, world=2), 4 * len(clips)):
            assert len({shapes[i] for i in chunk}) == 1


def test_bucketed_shards_train(bucketed, tmp_path):
    from tests.train.conftest import cfg_args, train_py

    out = tmp_path / "run"
    r = train_py(*cfg_args(out, bucketed, None, "train.max_steps=4", "train.checkpoint_every=0"))
    assert r.returncode == 0, r.stderr[-3000:]  # collate stacks each batch: one shape per batch or it fails
    losses = [json.loads(line)["train/loss"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4
