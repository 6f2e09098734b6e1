"""One writer per output folder: an exclusive lock held for a run's lifetime.

Training, cache builds and shard builds take `DIR/.reelora.lock` before they write. The lock is an
`fcntl.flock` on that file, so the kernel releases it when the holder dies, even by kill -9: a stale
lock needs no cleanup and no timeout guess. The file also records who holds it (pid, host, command,
start time) so the refusal can say so. Works on local filesystems and on NFSv4 (Linux maps flock to
POSIX locks there); on a filesystem without locks it fails loudly instead of pretending.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".reelora.lock"

__all__ = ["LockError", "RunLock", "LOCK_FILE", "lock_on_main"]


class LockError(RuntimeError):
    """The folder is in use by another process; the message names it."""


class RunLock:
    """Exclusive lock on `directory` (created if missing) for `what` ('training', 'shard build', ...).

        with RunLock(out, "training"):
            ...

    Raises:
        LockError: another live process holds it (its pid, host and command are in the message).
    """

    def __init__(self, directory: str | Path, what: str):
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise LockError(f"{self.directory} is in use: {self.holder()}; wait for it to finish or stop it "
                                f"(a dead holder's lock is released automatically)") from None
            raise LockError(f"{self.path}: cannot lock ({exc.strerror}); use a folder on a filesystem with locks") from exc
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "command": " ".join(sys.argv)[:300], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def holder(self) -> str:
        """Who holds the lock, as recorded in the lock file."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process (no holder recorded)"
        return (f"{info.get('what', 'a run')} by pid {info.get('pid', '?')} on host {info.get('host', '?')} "
                f"since {info.get('started', '?')} ({info.get('command', '')})")

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_on_main(directory: str | Path, what: str, state) -> tuple[RunLock | None, str | None]:
    """Lock for every process of a launch: the main process takes it, and all learn the outcome.

    `state` is accelerate's `Accelerator` or `PartialState`. Ranks write distinct files under the one lock, so
    only the main process holds it; the refusal is broadcast so every rank stops alike instead of waiting at
    a collective. Returns (the lock on the main process else None, the refusal message or None).
    """
    lock, message = None, None
    if state.is_main_process:
        try:
            lock = RunLock(directory, what).acquire()
        except LockError as exc:
            message = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message])[0]
    return lock, message
