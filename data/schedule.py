"""Staging titles in child processes: at most `workers` at a time, each watched for crashes and hangs.

Each title runs in a fresh `python -m reelora.data.schedule JOB.json` process: a decoder crash or hang
costs only that title (it is quarantined with the reason), and nothing (threads, torch state) leaks in
from the caller. A child that makes no progress (its heartbeat file stops changing) for
`stall_timeout` seconds is killed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from reelora.data import manifest as mf
from reelora.data.config import BuildConfig
from reelora.data.stage import HEARTBEAT, StagedTitle, quarantine, stage_title

__all__ = ["run_stage_jobs"]


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
                    job = {"library": str(library.path), "title_id": title.id, "cfg": asdict(cfg),
                           "work": str(work), "slot": slot + 1, "threads": threads}
                    job_path = work / f".job-{title.id}.json"
                    job_path.write_text(json.dumps(job), encoding="utf-8")
                    child = subprocess.Popen([sys.executable, "-m", "reelora.data.schedule", str(job_path)])
                    running[slot] = (title, child, time.time())
            time.sleep(0.02)
            for slot, (title, child, started) in list(running.items()):
                code = child.poll()
                if code is None:
                    if cfg.stall_timeout and _idle_seconds(work, title, started) > cfg.stall_timeout:
                        child.kill()
                        child.wait()
                        quarantine(work, title, cfg, f"worker stalled: no progress for {cfg.stall_timeout:.0f}s "
                                   "(decoder hang?)")
                        (work / f".job-{title.id}.json").unlink(missing_ok=True)
                        del running[slot]
                        bar.update()
                    continue
                staged = StagedTitle.read(work, title.id)
                status = staged.status if staged is not None else None
                if code != 0 and status != "quarantined" or code == 0 and status is None:
                    how = f"signal {-code}" if code < 0 else f"exit {code}"
                    quarantine(work, title, cfg, f"worker crashed while processing the file ({how})")
                (work / f".job-{title.id}.json").unlink(missing_ok=True)
                del running[slot]
                bar.update()
    finally:
        for _, child, _ in running.values():
            child.kill()
        bar.close()


def _idle_seconds(work: Path, title: mf.Title, started: float) -> float:
    try:
        last = (work / title.id / HEARTBEAT).stat().st_mtime
    except OSError:
        last = 0.0
    return time.time() - max(last, started)


def _child_main(argv: list[str]) -> int:
    """Entry of a staging child: `python -m reelora.data.schedule JOB.json`."""
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    os.environ["REELORA_DECODE_THREADS"] = str(job["threads"])
    import cv2

    cv2.setNumThreads(job["threads"])  # parallel titles already use the cores
    library = mf.load_library(job["library"])
    title, cfg, work = library.title(job["title_id"]), BuildConfig(**job["cfg"]), Path(job["work"])
    try:
        stage_title(title, cfg, library.trigger, work, job["slot"])
    except Exception as exc:
        # a bug or an unexpected library error: the title is quarantined with the error (and the
        # traceback goes to stderr) instead of taking the whole build down
        traceback.print_exc()
        quarantine(work, title, cfg, f"error while processing: {type(exc).__name__}: {exc}"[:500])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
