"""Takedown: only the shards holding the title are rewritten, on the record; rebuilds keep it out."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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


def _copy(built, tmp_path):
    out = tmp_path / "set" / "shards"
    shutil.copytree(built, out, ignore=shutil.ignore_patterns("work"))
    return out


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_crafted_title_ids_are_refused_and_nothing_outside_is_touched(built, tmp_path, capsys):
    out = _copy(built, tmp_path)
    (out / "work" / "x").mkdir(parents=True)
    before = _tree(tmp_path)
    for crafted in ["..", "../..", "../shards", "/tmp", "a/../..", "", ".hidden", "x" * 65]:
        assert reelora_main(["shards", "takedown", str(out), "--title", crafted]) == 2
        assert "is not a title id" in capsys.readouterr().err
    assert _tree(tmp_path) == before and (out / "work" / "x").is_dir()


def test_shard_names_from_the_index_stay_inside_the_folder(built, tmp_path, capsys):
    import json
    import os

    from reelora.data.shards import ShardError, ShardSet

    out = _copy(built, tmp_path)
    index = json.loads((out / "index.json").read_text())
    victim = tmp_path / "set" / "victim.tar"
    shutil.copy(out / index["shards"][0]["name"], victim)
    for name in ["../victim.tar", str(victim), "sub/../../victim.tar"]:
        index["shards"][0]["name"] = name
        (out / "index.json").write_text(json.dumps(index))
        with pytest.raises(ShardError, match="not a plain NAME.tar file name"):
            ShardSet(out)
        assert reelora_main(["shards", "verify", str(out)]) == 2
        title = next(iter(index["shards"][0]["titles"]))
        assert reelora_main(["shards", "takedown", str(out), "--title", title]) == 2
    capsys.readouterr()
    # a plain name that is a symlink to a file outside the folder
    first = read_index(built)["shards"][0]
    index["shards"][0]["name"] = first["name"]
    (out / "index.json").write_text(json.dumps(index))
    (out / first["name"]).unlink()
    os.symlink(victim, out / first["name"])
    with pytest.raises(ShardError, match="outside"):
        ShardSet(out)
    assert reelora_main(["shards", "verify", str(out)]) == 1
    assert "outside" in capsys.readouterr().err
    assert reelora_main(["shards", "takedown", str(out), "--title", next(iter(first["titles"]))]) == 2
    assert "outside" in capsys.readouterr().err
    assert victim.read_bytes() == (built / first["name"]).read_bytes()


def test_takedown_out_of_space_leaves_the_old_set(built, tmp_path, monkeypatch, capsys):
    import errno

    import reelora.data.audit as audit_mod

    out = _copy(built, tmp_path)
    before = _tree(out)

    def full(path, text):
        raise OSError(errno.ENOSPC, f"no space left on device while writing {path}")

    monkeypatch.setattr(audit_mod, "write_text_atomic", full)
    assert reelora_main(["shards", "takedown", str(out), "--title", "tenbit"]) == 2
    assert "no space left on device" in capsys.readouterr().err
    assert _tree(out) == before and not (out / ".incoming").exists()
    assert reelora_main(["shards", "verify", str(out)]) == 0


def test_takedown_waits_for_no_build(built, tmp_path, capsys):
    import os

    from reelora.lock import RunLock

    out = _copy(built, tmp_path)
    with RunLock(out, "shard build"):
        assert reelora_main(["shards", "takedown", str(out), "--title", "tenbit"]) == 2
    err = capsys.readouterr().err
    assert "is in use: shard build by pid " + str(os.getpid()) in err
    assert read_index(out) == read_index(built)
