"""Fixtures for the data tests: tiny libraries written to tmp dirs, tiny build settings."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from reelora.data.build import BuildConfig

RIGHTS = {"holder": "Test Holder", "license": "TEST-1.0", "training_allowed": True, "expires": "2100-01-01"}


def tiny_config(**overrides) -> BuildConfig:
    """8 frames at 8 fps (1 s clips), 48x32: what the media helpers make, fast to encode."""
    base = dict(num_frames=8, fps=8, height=32, width=48, workers=2, preset="ultrafast", as_of="2026-01-01")
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
