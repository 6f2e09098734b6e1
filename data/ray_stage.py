"""`--engine ray`: stage titles as Ray tasks, on one machine or a cluster; the assemble stays local.

Each title is one Ray task that runs the very same staging child as the local engine
(`python -m reelora.data.schedule JOB.json`, schedule.py) on whichever node Ray picked, watches it for
hangs the same way, and returns its exit code; the driver settles it exactly like the local engine
(quarantine a crash or a hang, stop on a full disk). So a decoder segfault still costs only its title,
and the staged results, hence the shards, are byte-identical to `--engine local`.

Needs: every node sees LIBRARY's media and OUT at the same paths (shared storage: NFS, Lustre, ...)
and runs the same Python environment with reelora installed (e.g. our Docker image).

Faults:
- a lost worker or node: Ray reruns the title's task (up to `ray_retries` times); a title's partial
  output is never used because staging writes `result.json` last.
- a killed driver: Ray ends the job's tasks (their children die with them); rerunning the same command
  skips every title already finished (their `result.json` matches), like the local engine.
"""
from __future__ import annotations

import time
from pathlib import Path

from reelora.data import manifest as mf
from reelora.data.config import BuildConfig
from reelora.data.schedule import STALLED, job_for, settle, stalled, start_child

__all__ = ["run_stage_jobs_ray"]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'reelora[ray]' (or pip install ray)") from None
    return ray


def stage_on_node(job: dict, stall_timeout: float) -> int:
    """Ray task body: run one title's staging child on this node; its exit code, or STALLED."""
    child = start_child(job)
    started = time.time()
    work = Path(job["work"])
    try:
        while child.poll() is None:
            if stalled(work, job["title_id"], stall_timeout, started):
                child.kill()
                child.wait()
                return STALLED
            time.sleep(0.05)
        return child.returncode
    finally:
        if child.poll() is None:  # the task was cancelled or failed: leave no orphan decoding
            child.kill()
            child.wait()


def run_stage_jobs_ray(library: mf.Library, jobs: list[mf.Title], cfg: BuildConfig, work: Path) -> None:
    """Stage `jobs` as Ray tasks on the cluster at `cfg.ray_address` (or a Ray started here)."""
    from tqdm import tqdm

    if not jobs:
        return
    ray = _import_ray()
    if not ray.is_initialized():
        # address "" = start a private Ray on this machine (all its cores); "auto" = the cluster this
        # machine joined with `ray start`; "ray://HOST:10001" or "HOST:6379" = that cluster
        ray.init(address=cfg.ray_address or None, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
    threads = max(1, int(cfg.ray_cpus_per_title))
    task = ray.remote(stage_on_node).options(num_cpus=cfg.ray_cpus_per_title, max_retries=cfg.ray_retries,
                                             retry_exceptions=False)
    refs = {task.remote(job_for(library, title, cfg, work, 0, threads), cfg.stall_timeout): title for title in jobs}
    bar = tqdm(total=len(jobs), desc="titles (ray)", unit="title", disable=None)
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                title = refs.pop(ref)
                try:
                    code = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise RuntimeError(
                        f"Ray lost title {title.id!r} {cfg.ray_retries + 1} times ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); finished titles are kept: rerun the "
                        "build to resume") from exc
                settle(work, title, cfg, code)
                bar.update()
    finally:
        for ref in refs:  # an error stops the build: stop the titles still queued or running
            ray.cancel(ref, force=True)
        bar.close()
