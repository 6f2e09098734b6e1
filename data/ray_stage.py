"""`--engine ray`: stage titles on CPU Ray actors and caption them on GPU Ray actors; the assemble stays local.

Two pools of Ray actors, sized apart (`plan_pools`):
- **staging workers** (CPU only, `ray_cpus_per_title` CPUs each): shots, cuts, quality scores and
  encoding; a title whose clips need a VLM caption comes back UNCAPTIONED;
- **caption workers** (`ray_gpus_per_captioner` GPUs each, 1 CPU): each loads the VLM once and captions
  the titles the staging workers finish, from their stored clips, one title at a time.
So GPUs never wait on decoding and CPUs never hold a GPU: a cluster of many CPU nodes and a few GPU
nodes runs both stages at their own rate. Caption workers start when the first title waits for them;
staging workers are released as soon as no title is left to stage (their CPUs go back to Ray).

Each actor holds one staging worker, the very same `--serve` process as the local engine
(schedule.StagingWorker), kept from title to title, and the driver settles each title exactly like the
local engine (quarantine a crash or a hang, stop on a full disk). So a decoder segfault still costs
only its title. Both engines caption from the stored clips with the same batches, so the staged
results, hence the shards, are byte-identical to `--engine local`.

Needs: every node sees LIBRARY's media and OUT at the same paths (shared storage: NFS, Lustre, ...)
and runs the same Python environment with reelora installed (e.g. our Docker image).

Faults:
- a lost actor (its process or node died): Ray restarts it and reruns its title (up to `ray_retries`
  times); a title's partial output is never used because each step writes `result.json` last.
- a killed driver: Ray ends the job's actors (their workers die with them); rerunning the same command
  skips every title already finished (their `result.json` matches), like the local engine, and only
  captions a title that was staged but not captioned.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from reelora.data import manifest as mf
from reelora.data.config import BuildConfig
from reelora.data.schedule import StagingWorker, job_for, settle
from reelora.data.stage import UNCAPTIONED, StagedTitle

__all__ = ["run_stage_jobs_ray", "StagingActor", "Pools", "plan_pools", "CAPTION_CPUS"]

CAPTION_CPUS = 1.0
"""CPUs a caption worker reserves: it decodes the stored clips and feeds the GPU."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'reelora[ray]' (or pip install ray)") from None
    return ray


@dataclass(frozen=True)
class Pools:
    """How many actors of each kind a build starts, and the GPUs a caption worker reserves."""

    staging: int
    captioning: int  # 0: nothing to caption with a VLM
    caption_gpus: float

    def describe(self) -> str:
        text = f"{self.staging} staging workers (CPU)"
        if self.captioning:
            where = f"{self.caption_gpus:g} GPU each" if self.caption_gpus else "on CPU: the cluster has no GPU"
            text += f", {self.captioning} caption workers ({where})"
        return text


def plan_pools(resources: dict, cfg: BuildConfig, to_stage: int, to_caption: int) -> Pools:
    """The two pools for a cluster with `resources` (ray.cluster_resources()), `to_stage` titles to stage
    and at most `to_caption` titles to caption (0 without a VLM captioner)."""
    gpus = resources.get("GPU", 0.0)
    caption_gpus = cfg.ray_gpus_per_captioner if gpus > 0 and cfg.caption_device != "cpu" else 0.0
    captioning = 0
    if to_caption:
        captioning = cfg.ray_caption_workers or (max(1, int(gpus // caption_gpus)) if caption_gpus else 1)
        captioning = min(captioning, to_caption)
    staging = 0
    if to_stage:
        # caption workers get their CPU first: they cannot start while staging workers hold every CPU
        spare = resources.get("CPU", 1.0) - captioning * CAPTION_CPUS
        staging = cfg.ray_workers or max(1, int(spare // cfg.ray_cpus_per_title))
        staging = min(staging, to_stage)
    return Pools(staging, captioning, caption_gpus)


class StagingActor:
    """Ray actor body: one staging worker on this node, fed one job (a title's step) at a time."""

    def __init__(self, threads: int):
        self.worker = StagingWorker(threads)

    def run(self, job: dict, stall_timeout: float) -> int:
        """Do one job; its code (as schedule.settle takes it)."""
        self.worker.start(job)
        while (code := self.worker.poll(stall_timeout)) is None:
            time.sleep(0.05)
        return code


def run_stage_jobs_ray(library: mf.Library, jobs: list[tuple[mf.Title, str]], cfg: BuildConfig, work: Path) -> None:
    """Run `jobs` ((title, step) pairs: "all" = stage and caption, "caption" = caption only) on Ray actors on
    the cluster at `cfg.ray_address` (or a Ray started here)."""
    from tqdm import tqdm

    if not jobs:
        return
    ray = _import_ray()
    if not ray.is_initialized():
        # address "" = start a private Ray on this machine (all its cores); "auto" = the cluster this
        # machine joined with `ray start`; "ray://HOST:10001" or "HOST:6379" = that cluster
        ray.init(address=cfg.ray_address or None, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
    to_stage = [title for title, step in jobs if step != "caption"]
    to_caption = [title for title, step in jobs if step == "caption"]
    pools = plan_pools(ray.cluster_resources(), cfg, len(to_stage), len(jobs) if cfg.captioner else 0)
    print(f"ray: {pools.describe()}", file=sys.stderr)
    options = dict(max_restarts=cfg.ray_retries, max_task_retries=cfg.ray_retries)
    stager = ray.remote(StagingActor).options(num_cpus=cfg.ray_cpus_per_title, num_gpus=0, **options)
    captioner = ray.remote(StagingActor).options(num_cpus=CAPTION_CPUS, num_gpus=pools.caption_gpus, **options)
    idle = {"stage": [stager.remote(max(1, int(cfg.ray_cpus_per_title))) for _ in range(pools.staging)],
            "caption": []}
    captioning = []
    live = list(idle["stage"])
    running = {}  # object ref -> (actor, title, step)
    bar = tqdm(total=len(jobs), desc=f"titles (ray: {pools.describe()})", unit="title", disable=None)
    try:
        while to_stage or to_caption or running:
            if to_caption and not captioning:  # the first title waits for captions: load the VLMs now
                captioning = [captioner.remote(1) for _ in range(pools.captioning)]
                idle["caption"], live = list(captioning), live + captioning
            for step, queue in (("stage", to_stage), ("caption", to_caption)):
                while idle[step] and queue:
                    a, title = idle[step].pop(), queue.pop(0)
                    job = job_for(library, title, cfg, work, 0, step)
                    running[a.run.remote(job, cfg.stall_timeout)] = (a, title, step)
            if not to_stage:  # nothing left to stage: give idle staging workers' CPUs back to Ray
                for a in idle["stage"]:
                    ray.kill(a)
                idle["stage"] = []
            if not running:
                continue
            done, _ = ray.wait(list(running), num_returns=1)
            a, title, step = running.pop(done[0])
            try:
                code = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise RuntimeError(
                    f"Ray lost the worker {'staging' if step == 'stage' else 'captioning'} title {title.id!r} "
                    f"{cfg.ray_retries + 1} times ({type(exc).__name__}: {first}); finished titles are kept: "
                    "rerun the build to resume") from exc
            settle(work, title, cfg, code)
            idle[step].append(a)
            staged = StagedTitle.read(work, title.id)
            if step == "stage" and staged is not None and staged.status == UNCAPTIONED:
                to_caption.append(title)  # on to a caption worker
            else:
                bar.update()
    finally:
        for a in live:  # their staging workers die with them
            ray.kill(a)
        bar.close()
