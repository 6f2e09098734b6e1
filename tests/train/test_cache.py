"""The latent/text cache: content-addressed, reused, rank-split, refused when built for another model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reelora.cli import main as reelora_main
from reelora.train.cache import CacheIds, LatentCache, build_cache
from reelora.data.shards import ShardSet
from reelora.train.batches import DataError
from reelora.train.loop import run
from tests.train.conftest import tiny_cfg, write_shards


def _entries(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): load_file(p) for p in sorted(root.rglob("*.safetensors"))}


def test_rebuild_reuses_and_two_ranks_make_the_same_cache(shards, cache, tmp_path, capsys):
    again = build_cache(str(shards), "tiny-wan", str(cache), progress=False)
    assert again["latents_written"] == 0 and again["latents_skipped"] == 6 and again["text_written"] == 0
    split = tmp_path / "split"
    assert reelora_main(["cache", "--shards", str(shards), "--model", "tiny-wan", "--out", str(split), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["latents_written"] == 6
    two = tmp_path / "two"
    s0 = build_cache(str(shards), "tiny-wan", str(two), rank=0, world=2, progress=False)
    s1 = build_cache(str(shards), "tiny-wan", str(two), rank=1, world=2, progress=False)
    assert s0["latents_written"] == 3 and s1["latents_written"] == 3
    a, b = _entries(cache), _entries(two)
    assert a.keys() == b.keys() and len([k for k in a if k.startswith("latents")]) == 6
    for k in a:
        for name in a[k]:
            torch.testing.assert_close(a[k][name], b[k][name], rtol=1e-5, atol=1e-5)
    z = next(v["latents"] for k, v in a.items() if k.startswith("latents"))
    assert z.shape == (16, 3, 8, 8)  # 5x32x32 frames -> tiny Wan VAE latents


def test_cache_for_another_model_or_missing_clips_is_a_clear_error(shards, cache, tmp_path):
    clips = ShardSet(shards).clips
    other = LatentCache(cache, CacheIds(vae="tiny-wan@seed1/vae", text_encoder="tiny-wan@seed1/text_encoder", dtype="fp32", max_text_len=64))
    with pytest.raises(DataError, match="built for another model.*vae=tiny-wan@seed0/vae"):
        other.check(clips)
    more = write_shards(tmp_path / "more", n=2, prefix="x")
    with pytest.raises(DataError, match=r"lacks latents for 2 of 2 clips \(x0000, x0001\).*reelora cache"):
        LatentCache(cache, CacheIds(vae="tiny-wan@seed0/vae", text_encoder="tiny-wan@seed0/text_encoder", dtype="fp32", max_text_len=64)).check(ShardSet(more).clips)
    assert run(tiny_cfg(tmp_path / "run", more, cache, "train.max_steps=1")) == 1


def test_bad_data_fails_before_training(tmp_path, capsys):
    assert run(tiny_cfg(tmp_path / "a", tmp_path / "nope", None)) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "index.json").write_text(json.dumps({"format": "reelora-shards/1", "shards": []}))
    assert run(tiny_cfg(tmp_path / "b", tmp_path / "empty", None)) == 1
    assert "empty dataset" in capsys.readouterr().err


def test_cached_and_on_the_fly_training_agree(shards, cache, tmp_path):
    a, b = tmp_path / "cached", tmp_path / "fly"
    assert run(tiny_cfg(a, shards, cache, "train.max_steps=2")) == 0
    assert run(tiny_cfg(b, shards, None, "train.max_steps=2")) == 0
    la = [json.loads(l)["train/loss"] for l in (a / "logs/metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["train/loss"] for l in (b / "logs/metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-4)


def test_local_model_cache_is_found_by_any_path_to_it(shards, tmp_path, monkeypatch):
    # The cache names a local model by its weights hash: a relative path, its absolute path or a moved
    # copy of the directory reuse the same entries instead of re-encoding everything.
    from reelora.models.registry import load_model

    spec, comps = load_model("tiny-wan")
    spec.pipeline(comps).save_pretrained(tmp_path / "models" / "base")
    monkeypatch.chdir(tmp_path)
    first = build_cache(str(shards), "models/base", str(tmp_path / "c"), progress=False)
    assert first["latents_written"] == 6
    again = build_cache(str(shards), str(tmp_path / "models" / "base"), str(tmp_path / "c"), progress=False)
    assert again["latents_written"] == 0 and again["latents_skipped"] == 6 and again["text_written"] == 0
