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


def _ids() -> CacheIds:
    return CacheIds(vae="tiny-wan@seed0/vae", text_encoder="tiny-wan@seed0/text_encoder", dtype="fp32", max_text_len=64)


def test_damaged_entries_are_named_and_rebuilt_then_training_matches_bitwise(shards, cache, tmp_path, capsys):
    import shutil

    from tests.train.test_train import adapter, assert_same_tensors

    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    clips = ShardSet(shards).clips
    lc = LatentCache(broken, _ids())
    truncated, flipped = lc.latent_path(clips[0]), lc.latent_path(clips[1])
    truncated.write_bytes(truncated.read_bytes()[:-100])  # a copy or a full disk cut it short
    data = bytearray(flipped.read_bytes())
    data[-64:-32] = bytes(b ^ 0xFF for b in data[-64:-32])  # bit rot inside the tensor data: the header still parses
    flipped.write_bytes(bytes(data))

    # the truncated entry stops training before it starts, naming the file, the clip and the fix
    assert run(tiny_cfg(tmp_path / "a", shards, broken, "train.max_steps=1")) == 1
    err = capsys.readouterr().err
    assert str(truncated) in err and clips[0].key in err and "reelora cache" in err and "Traceback" not in err
    # the flipped bytes are caught when the entry is read (its recorded sha256), naming the file and clip
    with pytest.raises(DataError, match=rf"{flipped}.*clip {clips[1].key}.*sha256.*--verify full"):
        lc.load_latents(clips[1])

    cmd = ["cache", "--shards", str(shards), "--model", "tiny-wan", "--out", str(broken), "--no-progress"]
    assert reelora_main(cmd) == 0  # header check: rebuilds the truncated entry
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["repaired"] == 1 and f"rebuilding {truncated}" in err
    assert run(tiny_cfg(tmp_path / "b", shards, broken, "train.max_steps=3")) == 1  # epoch 0 reads every clip
    err = capsys.readouterr().err
    assert str(flipped) in err and clips[1].key in err and "--verify full" in err and "Traceback" not in err
    assert reelora_main([*cmd, "--verify", "full"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["repaired"] == 1 and f"rebuilding {flipped}" in err

    assert _entries(broken).keys() == _entries(cache).keys()
    for k, tensors in _entries(broken).items():
        assert all(torch.equal(t, _entries(cache)[k][n]) for n, t in tensors.items()), k
    assert run(tiny_cfg(tmp_path / "repaired", shards, broken, "train.max_steps=3")) == 0
    assert run(tiny_cfg(tmp_path / "untouched", shards, cache, "train.max_steps=3")) == 0
    assert_same_tensors(adapter(tmp_path / "repaired"), adapter(tmp_path / "untouched"))


def test_a_second_cache_build_into_a_held_folder_is_refused(shards, tmp_path, capsys):
    from reelora.lock import LockError
    from tests.reelora.test_lock import _holder

    out = tmp_path / "c"
    p = _holder(out)
    try:
        rc = reelora_main(["cache", "--shards", str(shards), "--model", "tiny-wan", "--out", str(out), "--no-progress"])
        with pytest.raises(LockError, match=f"pid {p.pid}"):
            build_cache(str(shards), "tiny-wan", str(out), progress=False)
    finally:
        p.kill()
        p.wait()
    err = capsys.readouterr().err
    assert rc == 1 and "--out" in err and f"pid {p.pid}" in err and str(out) in err
    assert not (out / "latents").exists()


@pytest.mark.slow
def test_cache_under_accelerate_two_processes_equals_one_process(shards, cache, tmp_path):
    """The documented multi-process form: `accelerate launch --multi_gpu --num_processes 2 -m reelora.cli cache ...`."""
    from tests.train.conftest import launch

    out = tmp_path / "two"
    r = launch(29631, "-m", "reelora.cli", "cache", "--shards", str(shards), "--model", "tiny-wan", "--out", str(out),
               "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    [line] = [l for l in r.stdout.splitlines() if l.startswith("{")]  # one summary, from rank 0
    stats = json.loads(line)
    assert stats["ranks"] == 2 and stats["latents_written"] == 6 and stats["clips"] == 6
    assert [s["latents_written"] for s in stats["per_rank"]] == [3, 3]  # each rank its share
    a, b = _entries(cache), _entries(out)
    assert a.keys() == b.keys()
    for k in a:
        for name in a[k]:
            torch.testing.assert_close(a[k][name], b[k][name], rtol=1e-5, atol=1e-5)
