"""A title whose worker crashes or hangs is quarantined; the other titles are unaffected."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from reelora.data.build import build
from reelora.data.audit import read_audit
from tests.data.conftest import shard_metas, tiny_config, write_library
from tests.media import make_video


@pytest.fixture
def sabotage(tmp_path, monkeypatch):
    """Make staging children crash or hang on files named crash*/hang*, and find the disk full when
    writing clips of titles named nospace* (a sitecustomize on PYTHONPATH patches the real decoder and
    writer in the child process, the only place a segfault can be shown safely)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent('''
        import os, time
        if os.environ.get("REELORA_TEST_SABOTAGE"):
            import reelora.data.video as video
            original = video.read_frames
            def read_frames(info, *args, **kwargs):
                name = os.path.basename(info.path)
                if name.startswith("crash"):
                    os.kill(os.getpid(), 11)  # what a decoder segfault looks like from outside
                if name.startswith("hang"):
                    time.sleep(600)
                return original(info, *args, **kwargs)
            video.read_frames = read_frames
            import errno
            import reelora.data.stage as stage
            write = stage.write_bytes_atomic
            def full(path, data):
                if "nospace" in str(path):
                    raise OSError(errno.ENOSPC, f"no space left on device while writing {path}")
                return write(path, data)
            stage.write_bytes_atomic = full
    '''))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("REELORA_TEST_SABOTAGE", "1")


def test_crashing_and_hanging_workers_are_quarantined(tmp_path, sabotage):
    make_video(tmp_path / "good.mp4", 2, 8, 96, 64)
    make_video(tmp_path / "crash.mp4", 2, 8, 96, 64, palette_offset=2)
    make_video(tmp_path / "hang.mp4", 2, 8, 96, 64, palette_offset=4)
    lib = write_library(tmp_path, [{"id": "good", "path": "good.mp4"}, {"id": "crash", "path": "crash.mp4"},
                                   {"id": "hang", "path": "hang.mp4"}])
    summary = build(lib, tmp_path / "out", tiny_config(stall_timeout=3))
    reasons = {q["title_id"]: q["reason"] for q in summary.quarantined}
    assert reasons == {"crash": "worker crashed while processing the file (signal 11)",
                       "hang": "worker stalled: no progress for 3s (decoder hang?)"}
    assert [m["title_id"] for m in shard_metas(tmp_path / "out")] == ["good", "good"]
    assert read_audit(tmp_path / "out")["titles"]["good"]["status"] == "used"


def test_a_worker_out_of_space_fails_the_build_and_blames_no_title(tmp_path, sabotage, capsys):
    from reelora.cli import main as reelora_main
    from reelora.data.stage import StagedTitle

    make_video(tmp_path / "good.mp4", 2, 8, 96, 64)
    make_video(tmp_path / "nospace.mp4", 2, 8, 96, 64, palette_offset=2)
    lib = write_library(tmp_path, [{"id": "good", "path": "good.mp4"}, {"id": "nospace", "path": "nospace.mp4"}])
    out = tmp_path / "out"
    args = ["shards", "build", str(lib), "--out", str(out), "--num-frames", "8", "--fps", "8", "--height", "32",
            "--width", "48", "--preset", "ultrafast", "--workers", "1", "--scene-detector", "pyscenedetect"]  # shots don't matter here; TransNetV2 costs ~3 s CPU a title
    assert reelora_main(args) == 2
    err = capsys.readouterr().err
    assert "no space left on device while staging title 'nospace'" in err and "not quarantined" in err
    assert StagedTitle.read(out / "work", "nospace") is None  # no result: retried on the next run
    assert StagedTitle.read(out / "work", "good").status == "done"  # finished work is kept
    assert not (out / "index.json").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_killing_the_build_leaves_no_worker_running(tmp_path, sabotage):
    import signal
    import subprocess
    import sys
    import time

    make_video(tmp_path / "hang1.mp4", 2, 8, 96, 64)
    make_video(tmp_path / "hang2.mp4", 2, 8, 96, 64, palette_offset=2)
    lib = write_library(tmp_path, [{"id": "hang1", "path": "hang1.mp4"}, {"id": "hang2", "path": "hang2.mp4"}])
    out = tmp_path / "out"
    build = subprocess.Popen([sys.executable, "-m", "reelora", "shards", "build", str(lib), "--out", str(out),
                              "--num-frames", "8", "--fps", "8", "--height", "32", "--width", "48", "--workers", "2",
                              "--scene-detector", "pyscenedetect"],  # shots don't matter here; TransNetV2 costs ~3 s CPU a title
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not all((out / "work" / t / "heartbeat").exists() for t in ("hang1", "hang2")):
            time.sleep(0.1)
        workers = _children(build.pid)
        assert len(workers) == 2  # both titles' workers are in their (hanging) decoders
    finally:
        build.send_signal(signal.SIGKILL)
        build.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:  # don't leave them behind even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not survivors


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be collected
