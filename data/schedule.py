"""Staging titles in worker processes: at most `workers` at a time, each watched for crashes and hangs.

Titles are staged in `python -m reelora.data.schedule --serve` worker processes, one title at a time
each, fed job files on stdin. A worker lives on from title to title, so what is slow to set up (a VLM
captioner, torch and transformers imports) happens once per worker, not once per title. A decoder
crash or hang still costs only its title: the title is quarantined with the reason and a fresh
worker takes the next one; nothing (threads, torch state) leaks in from the caller. A worker that
makes no progress (its heartbeat file stops changing) for `stall_timeout` seconds is killed.

A worker dies with its parent (Linux: PR_SET_PDEATHSIG; elsewhere a thread watching the parent pid), so
killing a build leaves no worker running. A worker that cannot write its own output (disk full, quota,
read-only) reports NO_SPACE / CANNOT_WRITE: the build stops with that error and the title is not
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
from reelora.data.stage import (UNCAPTIONED, HEARTBEAT, OutputError, StagedTitle, caption_title, quarantine,
                                stage_title, title_dir)

__all__ = ["run_stage_jobs", "StagingWorker", "job_for", "settle", "NO_SPACE", "CANNOT_WRITE", "STALLED"]

NO_SPACE = 28  # a child's exit code: out of disk space or quota while writing its output (errno.ENOSPC)
CANNOT_WRITE = 73  # a child's exit code: another error writing its output (EX_CANTCREAT)
STALLED = -1000  # not an exit code: the worker made no progress for stall_timeout seconds and was killed
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


STEPS = ("stage", "caption", "all")
"""What a job asks of a worker: stage a title (leaving VLM captions for later), caption a staged title, or both."""


def run_stage_jobs(library: mf.Library, jobs: list[tuple[mf.Title, str]], cfg: BuildConfig, work: Path) -> None:
    """Run `jobs` ((title, step) pairs, step in STEPS) in `work` on `cfg.workers` worker processes;
    returns when all are done."""
    from tqdm import tqdm

    if not jobs:
        return
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    pending = list(jobs)
    workers = [StagingWorker(threads) for _ in range(cfg.workers)]
    running: dict[int, mf.Title] = {}  # slot -> the title its worker works on
    bar = tqdm(total=len(jobs), desc="titles", unit="title", disable=None)
    try:
        while pending or running:
            for slot, worker in enumerate(workers):
                if slot not in running and pending:
                    title, step = pending.pop(0)
                    running[slot] = title
                    worker.start(job_for(library, title, cfg, work, slot + 1, step))
            time.sleep(0.02)
            for slot, title in list(running.items()):
                code = workers[slot].poll(cfg.stall_timeout)
                if code is not None:
                    del running[slot]
                    settle(work, title, cfg, code)
                    bar.update()
        for worker in workers:  # no more titles: each worker exits at the end of its input
            worker.close()
    finally:
        for worker in workers:
            worker.stop()
        bar.close()


def job_for(library: mf.Library, title: mf.Title, cfg: BuildConfig, work: Path, slot: int, step: str = "all") -> dict:
    """What a staging worker needs to work on one title (written as its JOB.json); `step` is one of STEPS."""
    if step not in STEPS:
        raise ValueError(f"job step {step!r}: must be one of {STEPS}")
    return {"library": str(library.path), "title_id": title.id, "cfg": asdict(cfg), "work": str(work), "slot": slot,
            "step": step}


class StagingWorker:
    """One `--serve` worker process, kept from title to title, and the title it is staging.

    The local engine holds `--workers` of these; under `--engine ray` each Ray actor holds one
    (ray_stage.py). Either way the worker dies with its holder.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self.child: subprocess.Popen | None = None
        self.job_path: Path | None = None
        self.heartbeat: Path | None = None
        self.started = 0.0

    def start(self, job: dict) -> None:
        """Hand the worker one title's job (a fresh worker is started if there is none or it died)."""
        work = Path(job["work"])
        self.job_path = _job_path(work, job["title_id"])
        self.heartbeat = title_dir(work, job["title_id"]) / HEARTBEAT
        _finish(self.job_path)
        write_json_atomic(self.job_path, job)
        if self.child is None or self.child.poll() is not None:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "reelora.data.schedule", "--serve", str(self.threads), str(os.getpid())],
                stdin=subprocess.PIPE, text=True)
        try:
            self.child.stdin.write(f"{self.job_path}\n")
            self.child.stdin.flush()
        except BrokenPipeError:  # it died idle: poll() finds it gone and blames no title
            pass
        self.started = time.time()

    def poll(self, stall_timeout: float) -> int | None:
        """None while the title is being staged; else its code: the worker's, its exit code, or STALLED."""
        code = _read_done(self.job_path)
        if code is None:
            code = self.child.poll()
            if code is None:
                if stall_timeout and _idle_seconds(self.job_path, self.heartbeat, self.started) > stall_timeout:
                    self.stop()
                    return STALLED
                return None
            self.child = None  # it exited (crashed) while staging the title: a fresh one takes the next
        return code

    def close(self) -> None:
        """No more titles: let the worker reach the end of its input and exit."""
        if self.child is not None:
            self.child.stdin.close()
            self.child.wait()
            self.child = None

    def stop(self) -> None:
        if self.child is not None:
            _stop(self.child)
            self.child = None


def settle(work: Path, title: mf.Title, cfg: BuildConfig, code: int) -> None:
    """Record how a title's staging ended (a worker's code, an exit code or STALLED): quarantine a crash
    or a hang; raise when the worker could not write its output (our disk, not the title: the build stops)."""
    _finish(_job_path(work, title.id))
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


def _done_path(job_path: Path) -> Path:
    return job_path.with_suffix(".done")


def _taken_path(job_path: Path) -> Path:
    return job_path.with_suffix(".taken")


def _read_done(job_path: Path) -> int | None:
    """The exit code a worker recorded for the job at `job_path`, or None while it is still working."""
    try:
        return int(_done_path(job_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finish(job_path: Path) -> None:
    for path in (job_path, _done_path(job_path), _taken_path(job_path)):
        path.unlink(missing_ok=True)


def _stop(child: subprocess.Popen) -> None:
    child.kill()
    child.wait()
    if child.stdin is not None:
        try:
            child.stdin.close()
        except OSError:
            pass


STARTUP_SECONDS = 120.0
"""How long a fresh worker may take to start (imports on a loaded machine) before its stall clock runs."""


def _idle_seconds(job_path: Path, heartbeat: Path, started: float) -> float:
    """Seconds since the worker of the job at `job_path` last showed progress (its heartbeat, or taking the job)."""
    try:
        last = heartbeat.stat().st_mtime
    except OSError:
        last = 0.0
    try:
        last = max(last, _taken_path(job_path).stat().st_mtime)
    except OSError:  # not taken yet: a fresh worker is still importing
        started += STARTUP_SECONDS
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
    """Entry of a staging worker: `python -m reelora.data.schedule --serve THREADS PARENT_PID`.

    Reads job file paths from stdin, one a line, stages each title and writes its code (0, 1 when the
    title was quarantined, NO_SPACE, CANNOT_WRITE) to JOB.done; ends at the end of stdin. Staying alive
    between titles is what lets a VLM captioner load once per worker instead of once per title.
    """
    threads, parent = int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    import cv2

    # parallel titles already use the cores (decoding is single-threaded: see video._DECODE_THREADS;
    # OpenCV's resizes give the same pixels whatever its thread count)
    cv2.setNumThreads(threads)
    for line in sys.stdin:
        job_path = Path(line.strip())
        try:
            _taken_path(job_path).touch()  # the parent's stall clock starts now, not while this worker imported
        except OSError:
            pass
        code = _run_job(json.loads(job_path.read_text(encoding="utf-8")))
        try:
            write_json_atomic(_done_path(job_path), code)
        except OSError:  # no room even for the code: say it by exiting (the parent reads exit codes too)
            return code if code else CANNOT_WRITE
        if code in (NO_SPACE, CANNOT_WRITE):
            return code
    return 0


def _run_job(job: dict) -> int:
    """Do one job (stage and/or caption a title); returns the code the parent acts on."""
    library = mf.load_library(job["library"])
    title, cfg, work = library.title(job["title_id"]), BuildConfig(**job["cfg"]), Path(job["work"])
    try:
        status = UNCAPTIONED if job["step"] == "caption" else None
        if job["step"] in ("stage", "all"):
            status = stage_title(title, cfg, library.trigger, work, job["slot"]).status
        if job["step"] in ("caption", "all") and status == UNCAPTIONED:
            caption_title(title, cfg, library.trigger, work, job["slot"])
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
