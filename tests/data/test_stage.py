"""Staging one title: quarantine reasons, rights ranges, filters, captions, metadata, decoding by timestamp."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from reelora.data.audit import read_audit
from reelora.data.manifest import load_library
from reelora.data.shards import read_index, read_shard_samples
from reelora.data.stage import Heartbeat, StagedClip, StagedTitle, load_staged, quarantine, title_stage_key
from reelora.data.video import decode_clip
from tests.data.conftest import clips_by_title, shard_metas, tiny_config, write_library
from tests.media import make_video, read_clock

CLOCK_TOLERANCE = 0.1  # seconds: the clock strip survives two lossy encodes to about +-0.05


def _frames_of(out: Path, key: str) -> np.ndarray:
    for s in read_index(out)["shards"]:
        for x in read_shard_samples(out / s["name"]):
            if x["__key__"] == key:
                return decode_clip(x["mp4"]).numpy()
    raise KeyError(key)


def test_bad_files_are_quarantined_with_reasons(built):
    audit = read_audit(built)
    reasons = {q["title_id"]: q["reason"] for q in audit["quarantine"]}
    assert sorted(reasons) == sorted(["zero", "truncated", "notvideo", "audio", "missing", "directory"])
    assert reasons["zero"] == "zero-byte file"
    assert reasons["missing"] == "missing file"
    assert "not a regular file" in reasons["directory"]
    assert reasons["audio"] == "no video stream (audio only)"
    assert reasons["notvideo"].startswith("not a readable video")
    assert reasons["truncated"].startswith("not a readable video")
    assert audit["totals"]["titles_quarantined"] == 6
    for tid in reasons:
        assert audit["titles"][tid]["status"] == "quarantined"


@pytest.mark.parametrize("tid,forbidden", [("consent", (1.0, 2.5)), ("exclude", (0.5, 1.5))])
def test_no_excluded_second_reaches_a_shard(built, tid, forbidden):
    clips = clips_by_title(built)[tid]
    assert clips
    a, b = forbidden
    for meta in clips:
        assert meta["end_s"] <= a or meta["start_s"] >= b, meta
        # and the pictures themselves: every frame's clock reads outside the forbidden range
        for frame in _frames_of(built, meta["key"]):
            t = read_clock(frame)
            assert t < a - 1 / 8 + CLOCK_TOLERANCE or t > b - CLOCK_TOLERANCE, (meta["key"], t)
    reasons = [r["reason"] for r in read_audit(built)["titles"][tid]["excluded"]]
    assert any("Alice" in r or "excluded range" in r for r in reasons)
    assert not any("Bob" in r for r in reasons)  # consented performer excludes nothing


def test_black_and_static_clips_are_dropped(built):
    audit = read_audit(built)["titles"]
    assert [r["reason"].split(":")[0] for r in audit["black"]["excluded"]] == ["black", "black"]
    assert clips_by_title(built)["black"][0]["start_s"] == 2.0
    assert audit["static"]["clips"] == 0
    assert [r["reason"].split(":")[0] for r in audit["static"]["excluded"]] == ["near-static", "near-static"]


def test_clip_metadata_and_frames(built):
    metas = shard_metas(built)
    required = {"caption", "title_id", "start_s", "end_s", "fps", "num_frames", "width", "height", "license",
                "rights_holder", "caption_source", "source_sha256", "clip_sha256"}
    for meta in metas:
        assert required <= set(meta)
        assert meta["num_frames"] == 8 and meta["fps"] == 8.0 and (meta["width"], meta["height"]) == (48, 32)
        assert meta["end_s"] - meta["start_s"] == pytest.approx(1.0)
        assert meta["license"] == "TEST-1.0" and meta["rights_holder"] == "Test Holder"
    frames = _frames_of(built, metas[0]["key"])
    assert frames.shape == (8, 3, 32, 48)


def test_rotation_vfr_and_10bit_are_read_by_timestamp(built):
    for tid in ("rot", "tenbit", "vfr"):
        for meta in clips_by_title(built)[tid]:
            clock = [read_clock(f) for f in _frames_of(built, meta["key"])]
            expected = meta["start_s"] + np.arange(8) / 8
            if tid == "vfr":
                # VFR source: each grid time shows the last source frame at or before it
                from tests.media import frame_times

                src = np.asarray(frame_times(3, 8, vfr=True))
                expected = np.array([src[src <= t + 1e-6].max() for t in expected])
            # upright too: a rotated frame would put the box, not the clock strip, at the bottom
            np.testing.assert_allclose(clock, expected, atol=CLOCK_TOLERANCE, err_msg=tid)


def test_captions_sidecar_template_and_cleaning(built):
    good = {m["start_s"]: m for m in clips_by_title(built)["good"]}
    assert good[0.0]["caption"] == "tst style, A red room, with a box"
    assert good[0.0]["caption_source"] == "sidecar"
    assert good[1.0]["caption_source"] == "sidecar" and len(good[1.0]["caption"]) == 300
    assert good[1.0]["caption"].startswith("tst style, xxx")
    assert good[2.0]["caption"] == "tst style, Good: red then green"
    assert good[2.0]["caption_source"] == "template"
    warnings = read_audit(built)["titles"]["good"]["warnings"]
    assert any("captions.jsonl:2: skipped caption line" in w for w in warnings)


def test_staged_title_round_trips_and_stale_results_are_redone(tmp_path):
    make_video(tmp_path / "a.mp4", 1, 8, 96, 64)
    title = load_library(write_library(tmp_path, [{"id": "a", "path": "a.mp4"}])).title("a")
    cfg, work = tiny_config(), tmp_path / "work"
    (work / "a").mkdir(parents=True)
    staged = StagedTitle("a", str(title.path), title_stage_key(title, cfg), clips=[StagedClip({"key": "a_0"}, "00ff")])
    staged.write(work)
    assert StagedTitle.read(work, "a") == staged
    assert load_staged(work, title, cfg) == staged
    assert load_staged(work, title, tiny_config(crf=30)) is None  # another stage setting: staged again
    assert load_staged(work, title, tiny_config(shard_max_clips=1)) == staged  # an assembly setting: reused
    quarantine(work, title, cfg, "worker crashed")
    assert StagedTitle.read(work, "a").reason == "worker crashed"
    assert load_staged(work, title, cfg) is None  # quarantined titles are retried
    (work / "a" / "result.json").write_text("{")
    assert StagedTitle.read(work, "a") is None


def test_work_files_do_not_steer_paths(tmp_path):
    import json

    import pytest

    from reelora.data.shards import ShardError
    from reelora.data.stage import title_dir

    work = tmp_path / "work"
    for crafted in ["..", "../x", "/etc", "a/b", ""]:
        with pytest.raises(ShardError, match="is not a title id"):
            title_dir(work, crafted)
    (work / "a").mkdir(parents=True)
    good = StagedTitle("a", "a.mp4", {}, clips=[StagedClip({"key": "a_0000000"}, "00")])
    good.write(work)
    assert StagedTitle.read(work, "a") == good
    for bad in [{"title_id": "b"}, {"clips": [{"meta": {"key": "../../x"}, "signature": "00"}]},
                {"clips": [{"meta": {"key": "b_0000000"}, "signature": "00"}]}]:  # another title's key
        (work / "a" / "result.json").write_text(json.dumps({**json.loads(json.dumps(good.__dict__, default=vars)), **bad}))
        assert StagedTitle.read(work, "a") is None  # read as "not staged": the title is staged again


def test_heartbeat_is_kept_alive_through_one_long_call(tmp_path):
    """A caption worker loading a big VLM beats while it loads, so the stall clock does not kill it."""
    heart = Heartbeat(tmp_path / "heartbeat", every=0.05)
    os.utime(tmp_path / "heartbeat", (0, 0))
    with heart.kept_alive():
        time.sleep(0.3)  # the long call
    beaten = (tmp_path / "heartbeat").stat().st_mtime
    assert beaten > time.time() - 5
    os.utime(tmp_path / "heartbeat", (0, 0))
    time.sleep(0.2)
    assert (tmp_path / "heartbeat").stat().st_mtime == 0  # the thread stops with the call
