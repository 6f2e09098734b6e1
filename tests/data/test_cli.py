"""`reelora shards ...` commands: help, errors, audit, verify."""
from __future__ import annotations

import pytest

from reelora.cli import main
from tests.data.conftest import write_library
from tests.media import make_video


def test_bare_group_prints_help(capsys):
    assert main(["shards"]) == 2
    out = capsys.readouterr().out
    for sub in ("build", "audit", "takedown", "verify", "sample-library"):
        assert sub in out


def test_build_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["shards", "build", "--help"])
    out = capsys.readouterr().out
    for text in ("--num-frames", "frames per clip", "--workers", "--strict", "--node-rank", "--as-of",
                 "--captioner", "--dedup-threshold", "(default: 81)", "(default: 480)", "(default: 832)"):
        assert text in out


def test_errors_are_one_line_and_named(tmp_path, capsys):
    assert main(["shards", "build", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "none.yaml: cannot read library manifest" in capsys.readouterr().err
    (tmp_path / "library.yaml").write_text("studio: S\ntitles:\n  - {id: a, path: a.mp4, rights: {}}\n")
    assert main(["shards", "build", str(tmp_path / "library.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "library.yaml:3: title 'a': rights.training_allowed" in capsys.readouterr().err
    assert main(["shards", "audit", str(tmp_path / "nowhere")]) == 2
    assert main(["shards", "takedown", str(tmp_path / "nowhere"), "--title", "a"]) == 2
    assert "no shard index here" in capsys.readouterr().err


def test_audit_and_verify(tmp_path, capsys):
    make_video(tmp_path / "a.mp4", 2, 8, 96, 64)
    lib = write_library(tmp_path, [{"id": "a", "path": "a.mp4", "title": "A"}])
    out = tmp_path / "out"
    assert main(["shards", "build", str(lib), "--out", str(out), "--num-frames", "8", "--fps", "8", "--height", "32",
                 "--width", "48", "--preset", "ultrafast", "--scene-detector", "pyscenedetect"]) == 0  # shots don't matter here; TransNetV2 costs ~3 s CPU a title
    assert "2 clips in 1 shards from 1 titles" in capsys.readouterr().out
    assert main(["shards", "audit", str(out)]) == 0
    assert "| a | used | 2 | 2.00 | TEST-1.0 | Test Holder |" in capsys.readouterr().out
    assert main(["shards", "audit", str(out), "--json"]) == 0
    assert '"clips": 2' in capsys.readouterr().out
    assert main(["shards", "verify", str(out)]) == 0
    shard = out / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["shards", "verify", str(out)]) == 1
    assert "sha256 differs" in capsys.readouterr().err
    # takedown refuses to rewrite a shard that no longer matches the index
    assert main(["shards", "takedown", str(out), "--title", "a"]) == 2
    assert "refusing to rewrite" in capsys.readouterr().err
