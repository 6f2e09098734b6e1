"""Assembling staged titles: dedup across titles, shards and index.json."""
from __future__ import annotations

import hashlib

from reelora.data.audit import read_audit
from reelora.data.shards import read_index, read_shard_samples
from tests.data.conftest import clips_by_title


def test_index_records_library_settings_shards_and_shapes(built, library):
    index = read_index(built)
    assert index["library"]["sha256"] == hashlib.sha256(library.read_bytes()).hexdigest()
    assert index["settings"]["num_frames"] == 8 and index["settings"]["as_of"] == "2026-01-01"
    for s in index["shards"]:
        assert hashlib.sha256((built / s["name"]).read_bytes()).hexdigest() == s["sha256"]
        assert s["keys"] == [x["__key__"] for x in read_shard_samples(built / s["name"])]
        assert s["shapes"] == [[8, 32, 48]] * s["num_samples"]


def test_duplicates_across_titles_are_kept_once(built):
    audit = read_audit(built)["titles"]
    by = clips_by_title(built)
    assert "good-copy" not in by and "good-small" not in by
    dups = [r for r in audit["good-copy"]["excluded"] if r["reason"].startswith("near-duplicate of good_")]
    assert len(dups) == 4
    assert len([r for r in audit["good-small"]["excluded"] if "near-duplicate of good_" in r["reason"]]) == 4
