"""Fixtures for the data tests: tiny libraries written to tmp dirs, tiny build settings."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from reelora.data.config import BuildConfig
from tests.media import make_audio_only, make_video, reencode, truncate

RIGHTS = {"holder": "Test Holder", "license": "TEST-1.0", "training_allowed": True, "expires": "2100-01-01"}


def tiny_config(**overrides) -> BuildConfig:
    """8 frames at 8 fps (1 s clips), 48x32: what the media helpers make, fast to encode.

    PySceneDetect finds the shots here: the tests that build from this config are about resuming,
    captions, scheduling and takedowns, and TransNetV2 (the default) costs ~2.5 s of CPU per staged
    title (torch import in the title's process + one 100-frame window). The default detector is
    exercised by the shared `built` library and tests/data/test_shots.py.
    """
    base = dict(num_frames=8, fps=8, height=32, width=48, workers=2, preset="ultrafast", as_of="2026-01-01",
                scene_detector="pyscenedetect")
    base.update(overrides)
    return BuildConfig(**base)


def write_library(directory: Path, titles: list[dict], trigger: str = "tst style") -> Path:
    """Write library.yaml; titles get the standard rights unless they say otherwise."""
    entries = []
    for t in titles:
        entry = dict(t)
        entry.setdefault("rights", RIGHTS)
        if entry["rights"] is None:
            del entry["rights"]
        entries.append(entry)
    path = directory / "library.yaml"
    path.write_text(yaml.safe_dump({"studio": "Test Studio", "trigger": trigger, "titles": entries},
                                   sort_keys=False), encoding="utf-8")
    return path


def clips_by_title(out: Path) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for meta in shard_metas(out):
        by.setdefault(meta["title_id"], []).append(meta)
    return by


def shard_metas(out: Path) -> list[dict]:
    """Every KEY.json in the shards, in order."""
    from reelora.data.shards import read_index, read_shard_samples

    metas = []
    for s in read_index(out)["shards"]:
        metas += [json.loads(x["json"]) for x in read_shard_samples(out / s["name"])]
    return metas


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


@pytest.fixture
def cfg():
    return tiny_config()


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> Path:
    """A library with good, rights-restricted, broken, duplicate and unusable titles."""
    d = tmp_path_factory.mktemp("lib")
    m = d / "media"
    make_video(m / "good.mp4", 4, 8, 96, 64, scene_cuts=[2.0])  # 2 scenes x 2 clips (test_build checks the cut)
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


@pytest.fixture(scope="session")
def built(library, tmp_path_factory) -> Path:
    """`reelora shards build` of `library` (15 clips in 3 shards): built once, shared by the data tests."""
    from reelora.cli import main as reelora_main

    out = tmp_path_factory.mktemp("out")
    rc = reelora_main(["shards", "build", str(library), "--out", str(out), "--num-frames", "8", "--fps", "8",
                       "--height", "32", "--width", "48", "--workers", "2", "--preset", "ultrafast",
                       "--as-of", "2026-01-01", "--shard-max-clips", "5"])
    assert rc == 0  # quarantined files do not fail a non-strict build
    return out
