"""A title whose worker crashes or hangs is quarantined; the other titles are unaffected."""
from __future__ import annotations

import os
import textwrap

import pytest

from reelora.data.build import build
from reelora.data.audit import read_audit
from tests.data.conftest import shard_metas, tiny_config, write_library
from tests.media import make_video


@pytest.fixture
def sabotage(tmp_path, monkeypatch):
    """Make staging children crash or hang on files named crash*/hang* (a sitecustomize on PYTHONPATH
    patches the real decoder in the child process, the only place a segfault can be shown safely)."""
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
