"""Validation: held-out loss at fixed quantiles (fixed noise: repeatable) and sample clips written to disk."""
from __future__ import annotations

import json

from reelora.train.loop import run
from tests.train.conftest import tiny_cfg


def test_validation_loss_and_samples(tmp_path, shards, cache):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, shards, cache, "train.max_steps=2", "validation.every=1", "validation.num_clips=2",
                   "validation.quantiles=[0.1, 0.5, 0.9]", "validation.sample.steps=2",
                   "validation.prompts=[exp style a red room, exp style a blue room]")
    assert run(cfg) == 0
    recs = [json.loads(l) for l in (out / "logs/metrics.jsonl").read_text().splitlines()]
    val = [r for r in recs if "val/loss" in r]
    assert [r["step"] for r in val] == [1, 2]
    for r in val:
        assert {"val/loss_q0.1", "val/loss_q0.5", "val/loss_q0.9"} <= r.keys()
        assert r["val/loss"] > 0
    # Loss is measured at different noise levels, so the quantiles differ.
    assert len({round(val[0][f"val/loss_q{q}"], 6) for q in ("0.1", "0.5", "0.9")}) == 3
    import av

    for step in (1, 2):
        paths = sorted((out / "samples" / f"step-{step:06d}").glob("*.mp4"))
        assert [p.name for p in paths] == ["prompt-00.mp4", "prompt-01.mp4"]
        with av.open(str(paths[0])) as c:
            frames = list(c.decode(video=0))
        assert len(frames) == 5 and frames[0].width == 32


def test_a_nan_validation_sample_is_reported_and_not_written(tmp_path, shards, cache, monkeypatch, capsys):
    import reelora.models.sample as sample

    def nan_clip(pipe, req, max_text_len, text=None):
        raise sample.SampleError("the latents are NaN/inf after denoising step 1 of 2")

    monkeypatch.setattr(sample, "render", nan_clip)
    out = tmp_path / "run"
    cfg = tiny_cfg(out, shards, cache, "train.max_steps=1", "validation.every=1", "validation.num_clips=1",
                   "validation.sample.steps=2", "validation.prompts=[exp style a red room]")
    assert run(cfg) == 0  # training goes on: the sample is reported, not written as a black clip
    assert "validation sample 0 ('exp style a red room') at step 1: the latents are NaN/inf" in capsys.readouterr().err
    assert not list((out / "samples").rglob("*.mp4"))
    val = [json.loads(l) for l in (out / "logs/metrics.jsonl").read_text().splitlines() if "val/loss" in l]
    assert val[0]["val/samples"] == []
