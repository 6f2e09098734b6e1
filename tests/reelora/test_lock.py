"""One writer per folder: a second holder is refused naming the first; a dead holder's lock is free again."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from reelora.lock import LOCK_FILE, LockError, RunLock

HOLD = "import sys, time; from reelora.lock import RunLock; RunLock(sys.argv[1], 'training').acquire(); print('held', flush=True); time.sleep(60)"


def _holder(directory):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_holder_is_refused_with_pid_and_host_then_a_killed_holder_frees_it(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(LockError) as err:
            RunLock(tmp_path, "shard build").acquire()
        msg = str(err.value)
        assert str(tmp_path) in msg and f"pid {p.pid}" in msg and socket.gethostname() in msg and "training" in msg
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # kill -9 leaves the lock file behind but the kernel dropped the lock: no stale-lock cleanup needed
    assert (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path, "shard build") as lock:
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
    with RunLock(tmp_path, "again"):  # released on exit
        pass

