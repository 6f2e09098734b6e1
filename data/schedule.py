"""Staging titles in child processes: at most `workers` at a time, each watched for crashes and hangs.

Each title runs in a fresh `python -m reelora.data.schedule JOB.json` process: a decoder crash or hang
costs only that title (it is quarantined with the reason), and nothing (threads, torch state) leaks in
from the caller. A child that makes no progress (its heartbeat file stops changing) for
`stall_timeout` seconds is killed.

A child dies with its parent (Linux: PR_SET_PDEATHSIG; elsewhere a thread watching the parent pid), so
killing a build leaves no worker running. A child that cannot write its own output (disk full, quota,
read-only) exits with NO_SPACE / CANNOT_WRITE: the build stops with that error and the title is not
quarantined (its file is fine; rerun once there is space and the build resumes).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from reelora.data import manifest as mf
from reelora.data.config import BuildConfig
from reelora.data.shards import check_title_id
from reelora.files import write_json_atomic
from reelora.data.stage import HEARTBEAT, OutputError, StagedTitle, quarantine, stage_title, title_dir

__all__ = ["run_stage_jobs", "job_for", "start_child", "stalled", "settle", "NO_SPACE", "CANNOT_WRITE", "STALLED"]

NO_SPACE = 28  # a child's exit code: out of disk space or quota while writing its output (errno.ENOSPC)
CANNOT_WRITE = 73  # a child's exit code: another error writing its output (EX_CANTCREAT)
STALLED = -1000  # not an exit code: the child made no progress for stall_timeout seconds and was killed
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _job_path(work: Path, title_id: str) -> Path:
    return work / f".job-{check_title_id(title_id)}.json"


def _output_failure(work: Path, title: mf.Title, code: int) -> OSError:
    """The error a build stops with when a child could not write its output."""
    tdir = title_dir(work, title.id)
    try:
        free = f"{shutil.disk_usage(work).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    if code == NO_SPACE:
        return OSError(errno.ENOSPC, f"no space left on device while staging title {title.id!r} into {tdir} "
                       f"({free}); the title was not quarantined: free space and rerun, finished titles are kept")
    return OSError(errno.EIO, f"staging title {title.id!r} could not write its output under {tdir} (its error is "
                   "printed above); the title was not quarantined: fix that and rerun, finished titles are kept")


def run_stage_jobs(library: mf.Library, jobs: list[mf.Title], cfg: BuildConfig, work: Path) -> None:
    """Stage `jobs` (titles) into `work`, `cfg.workers` child processes at a time; returns when all are done."""
    from tqdm import tqdm

    if not jobs:
        return
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    pending = list(jobs)
    running: dict[int, tuple[mf.Title, subprocess.Popen, float]] = {}  # slot -> (title, child, start time)
    bar = tqdm(total=len(jobs), desc="titles", unit="title", disable=None)
    try:
        while pending or running:
            for slot in range(cfg.workers):
                if slot not in running and pending:
                    title = pending.pop(0)
                    child = start_child(job_for(library, title, cfg, work, slot + 1, threads))
                    running[slot] = (title, child, time.time())
            time.sleep(0.02)
            for slot, (title, child, started) in list(running.items()):
                code = child.poll()
                if code is None:
                    if stalled(work, title.id, cfg.stall_timeout, started):
                        child.kill()
                        child.wait()
                        del running[slot]
                        settle(work, title, cfg, STALLED)
                        bar.update()
                    continue
                del running[slot]
                settle(work, title, cfg, code)
                bar.update()
    finally:
        for _, child, _ in running.values():
            child.kill()
            child.wait()
        bar.close()


def job_for(library: mf.Library, title: mf.Title, cfg: BuildConfig, work: Path, slot: int, threads: int) -> dict:
    """What a staging child needs to stage one title (written as its JOB.json)."""
    return {"library": str(library.path), "title_id": title.id, "cfg": asdict(cfg), "work": str(work),
            "slot": slot, "threads": threads}


def start_child(job: dict) -> subprocess.Popen:
    """Start `python -m reelora.data.schedule JOB.json` for `job`; the child dies with this process."""
    job = dict(job, parent=os.getpid())
    job_path = _job_path(Path(job["work"]), job["title_id"])
    write_json_atomic(job_path, job)
    return subprocess.Popen([sys.executable, "-m", "reelora.data.schedule", str(job_path)])


def stalled(work: Path, title_id: str, stall_timeout: float, started: float) -> bool:
    """True when a title's child has made no progress for `stall_timeout` seconds (0 = never stalls)."""
    return bool(stall_timeout) and _idle_seconds(work, title_id, started) > stall_timeout


def settle(work: Path, title: mf.Title, cfg: BuildConfig, code: int) -> None:
    """Record how a title's child ended (exit `code`, or STALLED): quarantine a crash or a hang; raise
    when the child could not write its output (our disk, not the title: the build stops)."""
    _job_path(work, title.id).unlink(missing_ok=True)
    if code == STALLED:
        quarantine(work, title, cfg, f"worker stalled: no progress for {cfg.stall_timeout:.0f}s (decoder hang?)")
        return
    if code in (NO_SPACE, CANNOT_WRITE):
        raise _output_failure(work, title, code)
    staged = StagedTitle.read(work, title.id)
    status = staged.status if staged is not None else None
    if code != 0 and status != "quarantined" or code == 0 and status is None:
        how = f"signal {-code}" if code < 0 else f"exit {code}"
        quarantine(work, title, cfg, f"worker crashed while processing the file ({how})")


def _idle_seconds(work: Path, title_id: str, started: float) -> float:
    try:
        last = (title_dir(work, title_id) / HEARTBEAT).stat().st_mtime
    except OSError:
        last = 0.0
    return time.time() - max(last, started)


def _die_with_parent(parent: int) -> None:
    """Make this process end when `parent` (the build) does, however it ends (kill -9 included)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before the prctl took effect
                os._exit(1)
            return
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _child_main(argv: list[str]) -> int:
    """Entry of a staging child: `python -m reelora.data.schedule JOB.json`."""
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if "parent" in job:
        _die_with_parent(int(job["parent"]))
    import cv2

    # parallel titles already use the cores (decoding is single-threaded: see video._DECODE_THREADS;
    # OpenCV's resizes give the same pixels whatever its thread count)
    cv2.setNumThreads(job["threads"])
    library = mf.load_library(job["library"])
    title, cfg, work = library.title(job["title_id"]), BuildConfig(**job["cfg"]), Path(job["work"])
    try:
        stage_title(title, cfg, library.trigger, work, job["slot"])
    except OutputError as exc:  # our disk, not the title: the parent stops the build
        print(f"error: {exc}", file=sys.stderr)
        return NO_SPACE if exc.errno in _NO_SPACE_ERRNOS else CANNOT_WRITE
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:  # a library's own temp file, say
            print(f"error: {exc}", file=sys.stderr)
            return NO_SPACE
        # a bug or an unexpected library error: the title is quarantined with the error (and the
        # traceback goes to stderr) instead of taking the whole build down
        traceback.print_exc()
        try:
            quarantine(work, title, cfg, f"error while processing: {type(exc).__name__}: {exc}"[:500])
        except OutputError as out_exc:
            print(f"error: {out_exc}", file=sys.stderr)
            return NO_SPACE if out_exc.errno in _NO_SPACE_ERRNOS else CANNOT_WRITE
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
