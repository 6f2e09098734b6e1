"""Whole builds: every good clip written, rights-excluded titles left out, --strict."""
from __future__ import annotations

from reelora.cli import main as reelora_main
from reelora.data.audit import read_audit
from reelora.data.shards import read_index
from tests.data.conftest import clips_by_title, write_library
from tests.media import make_video


def test_good_clips_are_all_written(built):
    counts = {t: len(c) for t, c in clips_by_title(built).items()}
    assert counts == {"good": 4, "tenbit": 2, "rot": 2, "vfr": 2, "consent": 2, "exclude": 2, "black": 1}
    index = read_index(built)
    assert index["num_samples"] == 15
    assert sum(s["num_samples"] for s in index["shards"]) == 15
    assert [s["num_samples"] for s in index["shards"]] == [5, 5, 5]  # --shard-max-clips 5


def test_default_detector_finds_the_cuts(built):
    # good.mp4 cuts at 2.0 s, on a clip boundary: the clip counts above hold with or without the cut,
    # so check the shots themselves (TransNetV2, the default detector: --scene-detector transnetv2)
    audit = read_audit(built)["titles"]
    scenes = {t: e["scenes"] for t, e in audit.items() if e["status"] in ("used", "no clips")}
    assert scenes == {"good": 2, "tenbit": 1, "rot": 1, "vfr": 1, "consent": 1, "exclude": 1, "good-copy": 2,
                      "good-small": 2, "black": 2, "static": 1}


def test_rights_excluded_titles_contribute_nothing(built):
    audit = read_audit(built)
    by = clips_by_title(built)
    for tid, why in [("expired", "expired on 2020-01-01"), ("notallowed", "does not allow training"),
                     ("norights", "no rights recorded")]:
        assert tid not in by
        assert audit["titles"][tid]["status"] == "excluded"
        assert why in audit["titles"][tid]["reason"]


def test_strict_fails_but_still_writes(tmp_path):
    make_video(tmp_path / "good.mp4", 2, 8, 96, 64)
    (tmp_path / "zero.mp4").write_bytes(b"")
    lib = write_library(tmp_path, [{"id": "good", "path": "good.mp4"}, {"id": "zero", "path": "zero.mp4"}])
    out = tmp_path / "out"
    args = ["shards", "build", str(lib), "--out", str(out), "--num-frames", "8", "--fps", "8",
            "--height", "32", "--width", "48", "--preset", "ultrafast", "--scene-detector", "pyscenedetect"]  # shots don't matter here; TransNetV2 costs ~3 s CPU a title
    assert reelora_main([*args, "--strict"]) == 1
    assert read_index(out)["num_samples"] == 2  # the good clips are written all the same
    assert reelora_main(args) == 0


def test_rebuild_out_of_space_leaves_the_old_set(tmp_path, monkeypatch, capsys):
    import errno

    import reelora.data.audit as audit_mod

    make_video(tmp_path / "good.mp4", 3, 8, 96, 64)
    lib = write_library(tmp_path, [{"id": "good", "path": "good.mp4"}])
    out = tmp_path / "out"
    args = ["shards", "build", str(lib), "--out", str(out), "--num-frames", "8", "--fps", "8", "--height", "32",
            "--width", "48", "--preset", "ultrafast", "--as-of", "2026-01-01", "--scene-detector", "pyscenedetect"]  # shots don't matter here; TransNetV2 costs ~3 s CPU a title
    assert reelora_main([*args, "--shard-max-clips", "3"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert [s["num_samples"] for s in read_index(out)["shards"]] == [3]
    real = audit_mod.write_text_atomic

    def full(path, text):
        if path.name == "audit.html":
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path}")
        return real(path, text)

    monkeypatch.setattr(audit_mod, "write_text_atomic", full)
    assert reelora_main([*args, "--shard-max-clips", "2"]) == 2  # a new layout, written before audit.html
    assert "no space left on device while writing" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / ".incoming").exists()
    assert reelora_main(["shards", "verify", str(out)]) == 0
    monkeypatch.setattr(audit_mod, "write_text_atomic", real)
    assert reelora_main([*args, "--shard-max-clips", "2"]) == 0  # with space again: the new set, consistent
    assert [s["num_samples"] for s in read_index(out)["shards"]] == [2, 1]
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert reelora_main(["shards", "verify", str(out)]) == 0
    assert reelora_main([*args, "--shard-max-clips", "3"]) == 0  # and back: the stale second shard goes
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar"]


def test_one_build_per_folder(library, tmp_path, capsys):
    import os

    from reelora.lock import RunLock

    out = tmp_path / "out"
    with RunLock(out, "shard build"):  # another build is running into `out`
        assert reelora_main(["shards", "build", str(library), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"is in use: shard build by pid {os.getpid()} on host" in err
    assert not (out / "work").exists() and not (out / "index.json").exists()
