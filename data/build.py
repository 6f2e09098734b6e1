"""`reelora shards build`: library manifest -> staged clips per title -> WebDataset shards.

The build runs in two phases so it is parallel, resumable and deterministic at once (stage.py,
schedule.py, assemble.py; the settings are config.py's BuildConfig):

1. **Stage** (parallel, one child process per title): probe, detect scenes, cut, filter, encode
   and caption the title's clips into `OUT/work/TITLE_ID/` and finish with `result.json`. A title
   whose `result.json` matches the current settings, manifest entry and source file is skipped on
   a rerun, so an interrupted build resumes where it stopped (a title staged but not yet captioned
   by the VLM is only captioned). A child that crashes (decoders can segfault) only costs its own
   title, which is quarantined with the reason. `--engine ray` runs the same steps on Ray actors:
   CPU-only staging workers and a separate pool of GPU caption workers (ray_stage.py).
2. **Assemble** (one process, manifest order): drop near-duplicates across all titles, then write
   shards, `index.json` and the audit. The order never depends on which worker finished first,
   so `--workers 1` and `--workers 8` give bit-identical shards.

One writer: a build holds OUT's lock (`reelora.lock.RunLock`, released by the kernel if the build
dies), so a second build or a takedown into the same OUT is refused with the holder's pid and host.
Title workers die with the build (PR_SET_PDEATHSIG): killing the build leaves none running.
A worker that cannot write its own output (disk full) fails the build; it never quarantines the title.

Many machines: run the build with `--node-rank R --num-nodes N` on each machine against the same
OUT directory on shared storage; each stages titles i with i % N == R and stops. Then run the same
command once without `--node-rank/--num-nodes`: every title is already staged, so it only assembles.
A staging node locks only OUT/work/.node-R (one process per rank); run the final assemble after the
nodes have finished.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reelora.data import captions as cap
from reelora.data import manifest as mf
from reelora.data.assemble import assemble
from reelora.data.config import BuildConfig
from reelora.data.schedule import run_stage_jobs
from reelora.data.shards import INDEX, read_index
from reelora.data.stage import UNCAPTIONED, WORK, StagedTitle, staged_status
from reelora.lock import RunLock

__all__ = ["BuildConfig", "BuildSummary", "build"]


@dataclass
class BuildSummary:
    """What one `build` call did (printed by `reelora shards build`)."""

    out: Path
    clips: int = 0
    shards: int = 0
    titles_used: int = 0
    titles_staged: int = 0
    titles_skipped: int = 0
    quarantined: list[dict] = field(default_factory=list)
    excluded_titles: list[dict] = field(default_factory=list)
    assembled: bool = True

    def exit_code(self, strict: bool) -> int:
        return 1 if strict and self.quarantined else 0


def build(library_path: str | Path, out: str | Path, cfg: BuildConfig) -> BuildSummary:
    """Build (or resume) the shard set for a library. See the module docstring for the phases.

    Raises:
        ManifestError: the library manifest is invalid (nothing is written then).
        ValueError: the captioner model can't be loaded (nothing is written then).
        LockError: another build or takedown is writing `out` (nothing is written then).
        OSError: writing the output failed, e.g. the disk is full (the previous shard set is left as it was).
    """
    library = mf.load_library(library_path)
    if cfg.captioner:
        cap.check_captioner(cfg.captioner)
    out = Path(out)
    if cfg.num_nodes > 1:
        lock = RunLock(out / WORK / f".node-{cfg.node_rank}", f"shard staging (node {cfg.node_rank} of {cfg.num_nodes})")
    else:
        lock = RunLock(out, "shard build")
    with lock:
        return _build(library, out, cfg)


def _build(library: mf.Library, out: Path, cfg: BuildConfig) -> BuildSummary:
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    as_of = cfg.as_of_date()
    previous = read_index(out) if (out / INDEX).exists() else {}
    taken_down = {t["title_id"]: t for t in previous.get("takedowns", [])}
    summary = BuildSummary(out=out)

    eligible: list[mf.Title] = []
    for i, title in enumerate(library.titles):
        reason = mf.title_exclusion(title, as_of)
        if title.id in taken_down:
            reason = f"taken down on {taken_down[title.id].get('date', '?')}"
        if reason:
            summary.excluded_titles.append({"title_id": title.id, "reason": reason})
        elif i % cfg.num_nodes == cfg.node_rank:
            eligible.append(title)

    left = {t.id: staged_status(StagedTitle.read(work, t.id), t, cfg) for t in eligible}
    # a title staged but not captioned yet (a build stopped between the two) is only captioned
    todo = [(t, "caption" if left[t.id] == UNCAPTIONED else "all") for t in eligible if left[t.id] != "done"]
    summary.titles_skipped = len(eligible) - len(todo)
    summary.titles_staged = len(todo)
    if cfg.engine == "ray":
        from reelora.data.ray_stage import run_stage_jobs_ray

        run_stage_jobs_ray(library, todo, cfg, work)
    else:
        run_stage_jobs(library, todo, cfg, work)
    if cfg.num_nodes > 1:
        summary.assembled = False
        return summary

    excluded = {e["title_id"] for e in summary.excluded_titles}
    staged = {}
    for title in library.titles:
        if title.id not in excluded:
            staged[title.id] = StagedTitle.read(work, title.id)
            if staged[title.id] is None or staged[title.id].status == UNCAPTIONED:
                what = "no staged result" if staged[title.id] is None else "clips still waiting for captions"
                raise RuntimeError(f"{work / title.id}: {what} after staging (was {work} changed meanwhile?)")
    done = assemble(out, library, cfg, staged, summary.excluded_titles, previous)
    summary.clips, summary.shards, summary.titles_used = done.clips, done.shards, done.titles_used
    summary.quarantined = done.quarantined
    return summary
