"""End-to-end shard builds on generated media: bad input, rights, filters, captions, index/audit."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from reelora.cli import main as reelora_main
from reelora.data.build import build
from reelora.data.shards import read_audit, read_index, read_shard_samples
from reelora.data.video import decode_clip
from tests.data.conftest import shard_metas, tiny_config, write_library
from tests.media import make_audio_only, make_video, read_clock, reencode, truncate

CLOCK_TOLERANCE = 0.1  # seconds: the clock strip survives two lossy encodes to about +-0.05


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A library with good, rights-restricted, broken, duplicate and unusable titles."""
    d = tmp_path_factory.mktemp("lib")
    m = d / "media"
    make_video(m / "good.mp4", 4, 8, 96, 64, scene_cuts=[2.0])  # 2 scenes x 2 clips
    make_video(m / "tenbit.mkv", 2, 8, 96, 64, pix_fmt="yuv420p10le", palette_offset=2)  # 2 clips
    make_video(m / "rot.mp4", 2, 8, 96, 64, rotate=90, palette_offset=3)  # displayed 96x64 after rotation: 2 clips
    make_video(m / "vfr.mp4", 3, 8, 96, 64, vfr=True, audio=True, palette_offset=4)  # 2 clips, 0.8 s too short
    make_video(m / "consent.mp4", 4, 8, 96, 64, palette_offset=5)  # performer without consent at [1.0, 2.5)
    make_video(m / "exclude.mp4", 4, 8, 96, 64, palette_offset=6)  # exclude [0.5, 1.5)
    make_video(m / "restricted.mp4", 2, 8, 96, 64)  # used by the three rights-less titles
    shutil.copy(m / "good.mp4", m / "good_copy.mp4")  # same footage under another id
    reencode(m / "good.mp4", m / "good_small.mp4", 80, 54)  # same footage re-encoded
    make_video(m / "black.mp4", 3, 8, 96, 64, black=[(0.0, 2.0)], palette_offset=7)  # 2 black clips, 1 good
    make_video(m / "static.mp4", 2, 8, 96, 64, pattern="static")  # near-static: 0 clips
    # broken files
    (m / "zero.mp4").write_bytes(b"")
    truncate(make_video(m / "truncated.mp4", 2, 8, 96, 64), 0.5)  # moov at the end: unreadable
    (m / "notvideo.mp4").write_text("this is a text file, not a video\n" * 20)
    make_audio_only(m / "audio.m4a")
    (m / "a_directory.mp4").mkdir()
    (m / "captions.jsonl").write_text(
        json.dumps({"start": 0.0, "end": 1.0, "caption": "  A red\troom,\n with a box  "}) + "\n"
        + "not json\n"
        + json.dumps({"start": 1.0, "end": 2.0, "caption": "x" * 400}) + "\n",
        encoding="utf-8",
    )
    titles = [
        {"id": "good", "path": "media/good.mp4", "title": "Good", "description": "red then green",
         "captions": "media/captions.jsonl"},
        {"id": "tenbit", "path": "media/tenbit.mkv", "title": "Ten Bit"},
        {"id": "rot", "path": "media/rot.mp4", "title": "Rotated"},
        {"id": "vfr", "path": "media/vfr.mp4", "title": "VFR"},
        {"id": "consent", "path": "media/consent.mp4", "title": "Consent",
         "performers": [{"name": "Alice", "consent": False, "appears": [[1.0, 2.5]]},
                        {"name": "Bob", "consent": True, "appears": [[0.0, 4.0]]}]},
        {"id": "exclude", "path": "media/exclude.mp4", "title": "Exclude", "exclude": [[0.5, 1.5]]},
        {"id": "expired", "path": "media/restricted.mp4",
         "rights": {"holder": "H", "license": "L", "training_allowed": True, "expires": "2020-01-01"}},
        {"id": "notallowed", "path": "media/restricted.mp4",
         "rights": {"holder": "H", "license": "L", "training_allowed": False}},
        {"id": "norights", "path": "media/restricted.mp4", "rights": None},
        {"id": "good-copy", "path": "media/good_copy.mp4", "title": "Good again"},
        {"id": "good-small", "path": "media/good_small.mp4", "title": "Good re-encoded"},
        {"id": "black", "path": "media/black.mp4"},
        {"id": "static", "path": "media/static.mp4"},
        {"id": "zero", "path": "media/zero.mp4"},
        {"id": "truncated", "path": "media/truncated.mp4"},
        {"id": "notvideo", "path": "media/notvideo.mp4"},
        {"id": "audio", "path": "media/audio.m4a"},
        {"id": "missing", "path": "media/missing.mp4"},
        {"id": "directory", "path": "media/a_directory.mp4"},
    ]
    return write_library(d, titles)


@pytest.fixture(scope="module")
def built(library, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    rc = reelora_main(["shards", "build", str(library), "--out", str(out), "--num-frames", "8", "--fps", "8",
                       "--height", "32", "--width", "48", "--workers", "2", "--preset", "ultrafast",
                       "--as-of", "2026-01-01", "--shard-max-clips", "5"])
    assert rc == 0  # quarantined files do not fail a non-strict build
    return out


def clips_by_title(out: Path) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for meta in shard_metas(out):
        by.setdefault(meta["title_id"], []).append(meta)
    return by


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


def test_good_clips_are_all_written(built):
    counts = {t: len(c) for t, c in clips_by_title(built).items()}
    assert counts == {"good": 4, "tenbit": 2, "rot": 2, "vfr": 2, "consent": 2, "exclude": 2, "black": 1}
    index = read_index(built)
    assert index["num_samples"] == 15
    assert sum(s["num_samples"] for s in index["shards"]) == 15
    assert [s["num_samples"] for s in index["shards"]] == [5, 5, 5]  # --shard-max-clips 5


def test_rights_excluded_titles_contribute_nothing(built):
    audit = read_audit(built)
    by = clips_by_title(built)
    for tid, why in [("expired", "expired on 2020-01-01"), ("notallowed", "does not allow training"),
                     ("norights", "no rights recorded")]:
        assert tid not in by
        assert audit["titles"][tid]["status"] == "excluded"
        assert why in audit["titles"][tid]["reason"]


def _frames_of(out: Path, key: str) -> np.ndarray:
    for s in read_index(out)["shards"]:
        for x in read_shard_samples(out / s["name"]):
            if x["__key__"] == key:
                return decode_clip(x["mp4"]).numpy()
    raise KeyError(key)


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


def test_duplicates_across_titles_are_kept_once(built):
    audit = read_audit(built)["titles"]
    by = clips_by_title(built)
    assert "good-copy" not in by and "good-small" not in by
    dups = [r for r in audit["good-copy"]["excluded"] if r["reason"].startswith("near-duplicate of good_")]
    assert len(dups) == 4
    assert len([r for r in audit["good-small"]["excluded"] if "near-duplicate of good_" in r["reason"]]) == 4


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


def test_index_and_audit_contents(built, library):
    index = read_index(built)
    import hashlib

    assert index["library"]["sha256"] == hashlib.sha256(library.read_bytes()).hexdigest()
    assert index["settings"]["num_frames"] == 8 and index["settings"]["as_of"] == "2026-01-01"
    for s in index["shards"]:
        assert hashlib.sha256((built / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    audit = read_audit(built)
    assert audit["titles"]["good"]["clips"] == 4 and audit["titles"]["good"]["seconds_used"] == 4.0
    assert audit["totals"]["clips"] == 15
    assert {r["reason"] for r in audit["titles"]["vfr"]["excluded"]} == {
        "too short: 0.88s left in scene < 1.00s clip"}
    md = (built / "audit.md").read_text()
    assert "| good | used | 4 | 4.00 |" in md and "zero-byte file" in md
    page = (built / "audit.html").read_text()
    assert page.count("<img src='data:image/jpeg;base64,") == 15  # every used clip (<= 8 per title)
    assert "alt='tenbit_0000000'" in page and "zero-byte file" in page


def test_stock_webdataset_reads_the_shards(built):
    urls = [str(built / s["name"]) for s in read_index(built)["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 15
    assert {"mp4", "json", "jpg"} <= set(samples[0])
    meta = json.loads(samples[0]["json"])
    assert meta["clip_sha256"] == __import__("hashlib").sha256(samples[0]["mp4"]).hexdigest()


def test_strict_fails_but_still_writes(tmp_path):
    make_video(tmp_path / "good.mp4", 2, 8, 96, 64)
    (tmp_path / "zero.mp4").write_bytes(b"")
    lib = write_library(tmp_path, [{"id": "good", "path": "good.mp4"}, {"id": "zero", "path": "zero.mp4"}])
    out = tmp_path / "out"
    args = ["shards", "build", str(lib), "--out", str(out), "--num-frames", "8", "--fps", "8",
            "--height", "32", "--width", "48", "--preset", "ultrafast"]
    assert reelora_main([*args, "--strict"]) == 1
    assert read_index(out)["num_samples"] == 2  # the good clips are written all the same
    assert reelora_main(args) == 0


def test_takedown_rewrites_only_affected_shards(built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    before = {s["name"]: s for s in read_index(out)["shards"]}
    holding = {n for n, s in before.items() if "tenbit" in s["titles"]}
    assert holding and len(holding) < len(before)
    mtimes = {n: (out / n).stat().st_mtime_ns for n in before}
    assert reelora_main(["shards", "takedown", str(out), "--title", "tenbit", "--reason", "licence revoked"]) == 0
    index = read_index(out)
    after = {s["name"]: s for s in index["shards"]}
    for name in before:
        if name in holding:
            assert after[name]["sha256"] != before[name]["sha256"]
        else:
            assert after[name] == before[name] and (out / name).stat().st_mtime_ns == mtimes[name]
    assert index["num_samples"] == 13
    assert all(m["title_id"] != "tenbit" for m in shard_metas(out))
    record = index["takedowns"][-1]
    assert record["title_id"] == "tenbit" and record["clips_removed"] == 2
    assert sorted(record["shards_rewritten"]) == sorted(holding)
    assert read_audit(out)["titles"]["tenbit"]["status"] == "taken_down"
    page = (out / "audit.html").read_text()
    assert "alt='tenbit_" not in page and page.count("<img ") == 13
    assert not (out / "work" / "tenbit").exists()
    assert reelora_main(["shards", "verify", str(out)]) == 0
    # a rebuild into the same directory keeps the title out
    s = build(Path(read_index(out)["library"]["path"]), out, tiny_config())
    assert any(e["title_id"] == "tenbit" and e["reason"].startswith("taken down") for e in s.excluded_titles)
    assert all(m["title_id"] != "tenbit" for m in shard_metas(out))
    assert read_index(out)["num_samples"] == 13
