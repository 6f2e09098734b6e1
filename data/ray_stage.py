"""`--engine ray`: stage titles on Ray actors, on one machine or a cluster; the assemble stays local.

Each Ray actor holds one staging worker, the very same `--serve` process as the local engine
(schedule.StagingWorker), kept from title to title, so a VLM captioner loads once per actor; titles
go to whichever actor is free, and the driver settles each exactly like the local engine (quarantine
a crash or a hang, stop on a full disk). So a decoder segfault still costs only its title, and the
staged results, hence the shards, are byte-identical to `--engine local`. Actors reserve
`ray_cpus_per_title` CPUs and `ray_gpus_per_worker` GPUs each (a fraction lets several captioning
actors share a GPU), so CPU-only nodes and GPU nodes each get the actors they can hold.

Needs: every node sees LIBRARY's media and OUT at the same paths (shared storage: NFS, Lustre, ...)
and runs the same Python environment with reelora installed (e.g. our Docker image).

Faults:
- a lost actor (its process or node died): Ray restarts it and reruns its title (up to `ray_retries`
  times); a title's partial output is never used because staging writes `result.json` last.
- a killed driver: Ray ends the job's actors (their workers die with them); rerunning the same command
  skips every title already finished (their `result.json` matches), like the local engine.
"""
from __future__ import annotations

import time
from pathlib import Path

from reelora.data import manifest as mf
from reelora.data.config import BuildConfig
from reelora.data.schedule import StagingWorker, job_for, settle

__all__ = ["run_stage_jobs_ray", "StagingActor"]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'reelora[ray]' (or pip install ray)") from None
    return ray


class StagingActor:
    """Ray actor body: one staging worker on this node, fed one title at a time."""

    def __init__(self, threads: int):
        self.worker = StagingWorker(threads)

    def stage(self, job: dict, stall_timeout: float) -> int:
        """Stage one title; its code (as schedule.settle takes it)."""
        self.worker.start(job)
        while (code := self.worker.poll(stall_timeout)) is None:
            time.sleep(0.05)
        return code


def run_stage_jobs_ray(library: mf.Library, jobs: list[mf.Title], cfg: BuildConfig, work: Path) -> None:
    """Stage `jobs` on Ray actors on the cluster at `cfg.ray_address` (or a Ray started here)."""
    from tqdm import tqdm

    if not jobs:
        return
    ray = _import_ray()
    if not ray.is_initialized():
        # address "" = start a private Ray on this machine (all its cores); "auto" = the cluster this
        # machine joined with `ray start`; "ray://HOST:10001" or "HOST:6379" = that cluster
        ray.init(address=cfg.ray_address or None, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
    if cfg.ray_workers:
        count = cfg.ray_workers
    else:
        count = int(ray.cluster_resources().get("CPU", 1) // cfg.ray_cpus_per_title)
    count = max(1, min(count, len(jobs)))
    actor = ray.remote(StagingActor).options(num_cpus=cfg.ray_cpus_per_title, num_gpus=cfg.ray_gpus_per_worker,
                                             max_restarts=cfg.ray_retries, max_task_retries=cfg.ray_retries)
    threads = max(1, int(cfg.ray_cpus_per_title))
    actors = [actor.remote(threads) for _ in range(count)]
    pending = list(jobs)
    running = {}  # object ref -> (actor, title)
    bar = tqdm(total=len(jobs), desc=f"titles ({count} ray workers)", unit="title", disable=None)
    try:
        idle = list(actors)
        while pending or running:
            while idle and pending:
                a, title = idle.pop(), pending.pop(0)
                running[a.stage.remote(job_for(library, title, cfg, work, 0), cfg.stall_timeout)] = (a, title)
            done, _ = ray.wait(list(running), num_returns=1)
            a, title = running.pop(done[0])
            try:
                code = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise RuntimeError(
                    f"Ray lost the worker staging title {title.id!r} {cfg.ray_retries + 1} times "
                    f"({type(exc).__name__}: {first}); finished titles are kept: rerun the build to resume") from exc
            settle(work, title, cfg, code)
            idle.append(a)
            bar.update()
    finally:
        for a in actors:  # their staging workers die with them
            ray.kill(a)
        bar.close()
