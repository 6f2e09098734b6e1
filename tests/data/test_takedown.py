"""Takedown: only the shards holding the title are rewritten, on the record; rebuilds keep it out."""
from __future__ import annotations

import shutil
from pathlib import Path

from reelora.cli import main as reelora_main
from reelora.data.audit import read_audit
from reelora.data.build import build
from reelora.data.shards import read_index
from tests.data.conftest import shard_metas, tiny_config


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
