"""`reelora shards build`: library manifest -> staged clips per title -> WebDataset shards.

The build runs in two phases so it is parallel, resumable and deterministic at once:

1. **Stage** (parallel, one child process per title): probe, detect scenes, cut, filter, caption
   and encode the title's clips into `OUT/work/TITLE_ID/` and finish with `result.json`. A title
   whose `result.json` matches the current settings, manifest entry and source file is skipped on
   a rerun, so an interrupted build resumes where it stopped. A child that crashes (decoders can
   segfault) only costs its own title, which is quarantined with the reason.
2. **Assemble** (one process, manifest order): drop near-duplicates across all titles, then write
   shards, `index.json` and the audit. The order never depends on which worker finished first,
   so `--workers 1` and `--workers 8` give bit-identical shards.

Many machines: run the build with `--node-rank R --num-nodes N` on each machine against the same
OUT directory on shared storage; each stages titles i with i % N == R and stops. Then run the same
command once without `--node-rank/--num-nodes`: every title is already staged, so it only assembles.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from reelora.data import captions as cap
from reelora.data import clips as clipmod
from reelora.data import manifest as mf
from reelora.data import video

RESULT = "result.json"
HEARTBEAT = "heartbeat"
WORK = "work"


@dataclass
class BuildConfig:
    """Settings of a shard build. Each field is one `reelora shards build` option (its help)."""

    num_frames: int = field(default=81, metadata={"help": "frames per clip (Wan default: 81)"})
    fps: float = field(default=16.0, metadata={"help": "clip frame rate; sources are resampled by timestamp"})
    height: int = field(default=480, metadata={"help": "clip height in pixels (even), after resize + centre crop"})
    width: int = field(default=832, metadata={"help": "clip width in pixels (even), after resize + centre crop"})
    buckets: str = field(default="", metadata={"help": "aspect-ratio buckets as comma-separated HEIGHTxWIDTH sizes (e.g. 480x832,832x480,624x624); each title uses the one nearest its aspect ratio instead of --height x --width"})
    workers: int = field(default=1, metadata={"help": "titles processed in parallel (one process each)"})
    strict: bool = field(default=False, metadata={"help": "exit non-zero if any file was quarantined (good clips are still written)"})
    node_rank: int = field(default=0, metadata={"help": "this machine's index for a multi-machine build (see module docs)"})
    num_nodes: int = field(default=1, metadata={"help": "machines sharing the staging work; >1 stages only, a final single run assembles"})
    as_of: str = field(default="", metadata={"help": "date (YYYY-MM-DD) licence expiry is judged on; default today (recorded in index.json)"})
    scene_threshold: float = field(default=27.0, metadata={"help": "PySceneDetect ContentDetector threshold (lower = more cuts)"})
    min_scene_seconds: float = field(default=0.5, metadata={"help": "shortest scene PySceneDetect may cut"})
    black_level: float = field(default=16.0, metadata={"help": "frames with mean luma below this (0-255) count as black"})
    black_fraction: float = field(default=0.5, metadata={"help": "drop clips with more than this fraction of black frames"})
    static_level: float = field(default=0.25, metadata={"help": "drop clips whose mean frame-to-frame change (grey levels) is below this"})
    dedup_threshold: float = field(default=4.0, metadata={"help": "clips whose fingerprints differ by at most this many grey levels on average are near-duplicates; negative disables dedup"})
    crf: int = field(default=18, metadata={"help": "x264 quality of clip mp4s (lower = better, bigger)"})
    preset: str = field(default="fast", metadata={"help": "x264 preset of clip mp4s"})
    caption_max_chars: int = field(default=300, metadata={"help": "captions are cut to this many characters on a word boundary"})
    captioner: str = field(default="", metadata={"help": "transformers image-to-text model path/id used when no sidecar caption covers a clip; empty = template captions"})
    captioner_prompt: str = field(default="", metadata={"help": "text prompt given to the captioner model, if it takes one"})
    shard_max_clips: int = field(default=100, metadata={"help": "at most this many clips per shard tar"})
    shard_max_mb: float = field(default=1024.0, metadata={"help": "start a new shard once one holds this many MB"})
    thumbnails: bool = field(default=True, metadata={"help": "store a KEY.jpg thumbnail (middle frame) with each clip"})
    decoder: str = field(default="decord", metadata={"help": "preferred decoder: decord (PyAV where decord can't read a file) or pyav"})
    probe_timeout: float = field(default=60.0, metadata={"help": "seconds before a media probe is declared hung"})
    stall_timeout: float = field(default=300.0, metadata={"help": "a title's worker that makes no progress (no frame decoded, no clip written) for this many seconds is killed and the title quarantined (0 = never)"})

    def __post_init__(self) -> None:
        self.fps = float(self.fps)  # 16 and 16.0 must be the same setting (stage keys, index)

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"build setting {name}={getattr(self, name)!r}: {why}")

        if self.num_frames < 1:
            raise bad("num_frames", "must be >= 1")
        if not self.fps > 0:
            raise bad("fps", "must be > 0")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v < 2 or v % 2:
                raise bad(name, "must be an even number >= 2 (H.264 yuv420p)")
        if self.workers < 1:
            raise bad("workers", "must be >= 1")
        if self.num_nodes < 1 or not 0 <= self.node_rank < self.num_nodes:
            raise bad("node_rank", f"must be in [0, num_nodes={self.num_nodes})")
        if self.as_of:
            try:
                dt.date.fromisoformat(self.as_of)
            except ValueError:
                raise bad("as_of", "must be a YYYY-MM-DD date") from None
        self.sizes()  # validates --buckets
        if self.decoder not in ("decord", "pyav"):
            raise bad("decoder", "must be 'decord' or 'pyav'")
        if self.shard_max_clips < 1:
            raise bad("shard_max_clips", "must be >= 1")
        if not 0 <= self.black_fraction <= 1:
            raise bad("black_fraction", "must be in [0, 1]")

    def sizes(self) -> list[tuple[int, int]]:
        """The (height, width) clip sizes allowed: the buckets, else just height x width."""
        if not self.buckets.strip():
            return [(self.height, self.width)]
        sizes = []
        for item in self.buckets.split(","):
            try:
                h, w = (int(v) for v in item.strip().lower().split("x"))
            except ValueError:
                raise ValueError(f"build setting buckets={self.buckets!r}: {item.strip()!r} is not HEIGHTxWIDTH") from None
            if h < 2 or w < 2 or h % 2 or w % 2:
                raise ValueError(f"build setting buckets={self.buckets!r}: {h}x{w} needs even sides >= 2")
            sizes.append((h, w))
        return sizes

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the clips cut from a width x height source: the nearest aspect bucket."""
        aspect = np.log(width / height)
        return min(self.sizes(), key=lambda hw: (abs(np.log(hw[1] / hw[0]) - aspect), hw))

    def as_of_date(self) -> dt.date:
        return dt.date.fromisoformat(self.as_of) if self.as_of else dt.date.today()

    def stage_settings(self) -> dict:
        """The settings a staged title depends on (changing any re-stages every title)."""
        skip = {"workers", "strict", "node_rank", "num_nodes", "as_of", "dedup_threshold",
                "shard_max_clips", "shard_max_mb", "probe_timeout", "stall_timeout"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def output_settings(self) -> dict:
        """Settings recorded in index.json (everything that shapes the shards)."""
        skip = {"workers", "strict", "node_rank", "num_nodes", "probe_timeout", "stall_timeout"}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["as_of"] = self.as_of_date().isoformat()
        return d


@dataclass
class BuildSummary:
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


# --------------------------------------------------------------------------- staging one title


def title_stage_key(title: mf.Title, cfg: BuildConfig) -> dict:
    """What a finished staging of `title` depends on; any change means it is redone."""
    try:
        st = title.path.stat()
        source = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        source = None
    sidecar = None
    if title.captions is not None:
        try:
            sidecar = hashlib.sha256(title.captions.read_bytes()).hexdigest()
        except OSError:
            sidecar = "unreadable"
    return {"settings": cfg.stage_settings(), "entry": title.entry_sha256, "source": source, "sidecar": sidecar}


def stage_title(title: mf.Title, cfg: BuildConfig, trigger: str, work: Path, slot: int = 0) -> dict:
    """Turn one title into staged clips under `work/TITLE_ID/`; return (and write) its result.

    Never raises for bad media: problems become a "quarantined" result with the reason.
    """
    tdir = work / title.id
    if tdir.exists():
        shutil.rmtree(tdir)
    (tdir / "clips").mkdir(parents=True)
    result: dict[str, Any] = {
        "title_id": title.id,
        "path": str(title.path),
        "key": title_stage_key(title, cfg),
        "status": "done",
        "clips": [],
        "rejected": [],
        "warnings": [],
    }
    try:
        _stage(title, cfg, trigger, tdir, result, slot)
    except video.MediaError as exc:
        result.update(status="quarantined", reason=str(exc), clips=[])
    _write_json_atomic(tdir / RESULT, result)
    return result


def _stage(title: mf.Title, cfg: BuildConfig, trigger: str, tdir: Path, result: dict, slot: int) -> None:
    from tqdm import tqdm

    heart = Heartbeat(tdir / HEARTBEAT)
    info = video.probe(title.path, timeout=cfg.probe_timeout)
    if cfg.decoder == "pyav" and info.decoder != "pyav":
        info = dataclasses.replace(info, decoder="pyav", decord_error="PyAV chosen by --decoder pyav")
    result["probe"] = info.to_dict()
    result["source_sha256"] = _sha256_file(title.path)
    fps, n = cfg.fps, cfg.num_frames
    grid = video.grid_size(info, fps)

    # pass 1: scene cuts on small frames, and which source frame each grid point shows
    cuts = clipmod.SceneCuts(fps, cfg.scene_threshold, cfg.min_scene_seconds)
    small = video.fit_size(info.width, info.height, 160)
    source_times = []
    report = video.DecodeReport()
    bar = tqdm(total=grid, desc=f"{title.id} scenes", unit="frame", position=slot, leave=False, disable=None)
    for k, src_t, frame in video.read_frames(info, fps, range(grid), lambda f: _resize(f, small), report):
        cuts.add(k, frame)
        source_times.append(src_t)
        bar.update()
        heart.beat()
    bar.close()
    decoded = len(source_times)
    if decoded == 0:
        raise video.MediaError(f"no decodable frames ({report.error or 'empty video stream'})")
    if info.declared_duration > info.duration + 0.5:
        result["warnings"].append(
            f"file holds {info.duration:.2f}s of the {info.declared_duration:.2f}s its header declares "
            "(truncated?); clips were cut from the readable part"
        )
    if report.stopped_at is not None:
        result["warnings"].append(
            f"decoding stopped at {decoded / fps:.2f}s of {info.duration:.2f}s ({report.error}); "
            "clips were cut from the readable part"
        )
    scene_cuts = cuts.finish()
    result["scenes"] = len(scene_cuts) + 1
    result["seconds_decoded"] = round(decoded / fps, 4)

    forbidden = mf.forbidden_ranges(title)
    allowed, reasons = clipmod.frame_allowed(decoded, fps, np.asarray(source_times), forbidden)
    windows, rejected = clipmod.plan_windows(decoded, scene_cuts, allowed, reasons, n, fps)
    result["rejected"] += [r.to_dict() for r in rejected]

    # pass 2: decode just the frames of the planned clips at the output size
    entries, problems = cap.load_sidecar(title.captions) if title.captions else ([], [])
    result["warnings"] += problems
    captioner = cap.VLMCaptioner(cfg.captioner, cfg.captioner_prompt) if cfg.captioner and windows else None
    rights = mf.rights_record(title)
    wanted = [w.start + i for w in windows for i in range(w.length)]
    frames: list[np.ndarray] = []
    window_iter = iter(windows)
    current = next(window_iter, None)
    bar = tqdm(total=len(windows), desc=f"{title.id} clips", unit="clip", position=slot, leave=False, disable=None)
    out_h, out_w = cfg.size_for(info.width, info.height)
    crop = lambda f: video.resize_center_crop(f, out_w, out_h)  # noqa: E731
    report2 = video.DecodeReport()
    for k, _, frame in video.read_frames(info, fps, wanted, crop, report2):
        heart.beat()
        frames.append(frame)
        if len(frames) < current.length:
            continue
        clip = np.stack(frames)
        frames = []
        start_s, end_s = current.seconds(fps)
        problem = clipmod.content_problem(clip, cfg.black_level, cfg.black_fraction, cfg.static_level)
        if problem:
            result["rejected"].append(clipmod.Rejected(start_s, end_s, problem).to_dict())
        else:
            result["clips"].append(
                _write_clip(title, cfg, trigger, tdir, current, clip, entries, captioner, rights, result)
            )
        bar.update()
        current = next(window_iter, None)
    bar.close()
    if report2.stopped_at is not None:
        result["warnings"].append(f"second decoding pass stopped early: {report2.error}")
    result["seconds_used"] = round(len(result["clips"]) * n / fps, 4)


def _write_clip(title, cfg, trigger, tdir, window, clip, entries, captioner, rights, result) -> dict:
    import cv2

    fps = cfg.fps
    start_s, end_s = window.seconds(fps)
    # the trigger token goes into every caption, whatever wrote it: it is what the LoRA learns
    caption, source = cap.sidecar_caption(entries, start_s, end_s), "sidecar"
    if caption is None and captioner is not None:
        caption, source = captioner(clip), "vlm"
    if caption and caption.strip():
        caption = cap.with_trigger(trigger, caption)
    else:
        caption, source = cap.template_caption(trigger, title.title or title.id, title.description), "template"
    caption = cap.clean_caption(caption, cfg.caption_max_chars)
    key = f"{title.id}_{window.start:07d}"
    mp4 = video.encode_clip(clip, fps, crf=cfg.crf, preset=cfg.preset)
    (tdir / "clips" / f"{key}.mp4").write_bytes(mp4)
    if cfg.thumbnails:
        ok, jpg = cv2.imencode(".jpg", clip[len(clip) // 2][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
        (tdir / "clips" / f"{key}.jpg").write_bytes(jpg.tobytes())
    meta = {
        "key": key,
        "caption": caption,
        "caption_source": source,
        "title_id": title.id,
        "title": title.title,
        "start_s": round(start_s, 6),
        "end_s": round(end_s, 6),
        "fps": fps,
        "num_frames": int(len(clip)),
        "width": int(clip.shape[2]),
        "height": int(clip.shape[1]),
        **rights,
        "source_sha256": result["source_sha256"],
        "clip_sha256": hashlib.sha256(mp4).hexdigest(),
    }
    return {"meta": meta, "signature": clipmod.signature(clip).tobytes().hex()}


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return video.resize(frame, *size)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _child_main(argv: list[str]) -> int:
    """Entry of a staging child: `python -m reelora.data.build JOB.json`."""
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
        _quarantine(work, title, cfg, f"error while processing: {type(exc).__name__}: {exc}"[:500])
        return 1
    return 0


# --------------------------------------------------------------------------- orchestration


def load_staged(work: Path, title: mf.Title, cfg: BuildConfig) -> dict | None:
    """The staged result of a title if it is finished and still current, else None."""
    try:
        result = json.loads((work / title.id / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if result.get("status") != "done":
        return None  # quarantined titles are retried: the file may have been fixed
    # json round-trip so tuples/floats compare the way they were stored
    if result.get("key") != json.loads(json.dumps(title_stage_key(title, cfg))):
        return None
    return result


def _run_stage_jobs(library: mf.Library, jobs: list[mf.Title], cfg: BuildConfig, work: Path) -> None:
    """Stage titles in child processes, at most `cfg.workers` at a time.

    Each title runs in a fresh `python -m reelora.data.build` process: a decoder crash or hang
    costs only that title, and nothing (threads, torch state) leaks in from the caller.
    """
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
                    child = subprocess.Popen([sys.executable, "-m", "reelora.data.build", str(job_path)])
                    running[slot] = (title, child, time.time())
            time.sleep(0.02)
            for slot, (title, child, started) in list(running.items()):
                code = child.poll()
                if code is None:
                    if cfg.stall_timeout and _idle_seconds(work, title, started) > cfg.stall_timeout:
                        child.kill()
                        child.wait()
                        _quarantine(work, title, cfg, f"worker stalled: no progress for {cfg.stall_timeout:.0f}s "
                                    "(decoder hang?)")
                        (work / f".job-{title.id}.json").unlink(missing_ok=True)
                        del running[slot]
                        bar.update()
                    continue
                if code != 0 and _staged_status(work, title) != "quarantined" or code == 0 and _staged_status(work, title) is None:
                    how = f"signal {-code}" if code < 0 else f"exit {code}"
                    _quarantine(work, title, cfg, f"worker crashed while processing the file ({how})")
                (work / f".job-{title.id}.json").unlink(missing_ok=True)
                del running[slot]
                bar.update()
    finally:
        for _, child, _ in running.values():
            child.kill()
        bar.close()


class Heartbeat:
    """Touches a file while a title makes progress, so the parent can tell slow from hung."""

    def __init__(self, path: Path, every: float = 1.0):
        self.path, self.every, self._last = path, every, 0.0
        self.beat()

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self.path.touch()
            self._last = now


def _idle_seconds(work: Path, title: mf.Title, started: float) -> float:
    try:
        last = (work / title.id / HEARTBEAT).stat().st_mtime
    except OSError:
        last = 0.0
    return time.time() - max(last, started)


def _staged_status(work: Path, title: mf.Title) -> str | None:
    try:
        return json.loads((work / title.id / RESULT).read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        return None


def _quarantine(work: Path, title: mf.Title, cfg: BuildConfig, reason: str) -> None:
    tdir = work / title.id
    tdir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(tdir / RESULT, {
        "title_id": title.id, "path": str(title.path), "key": title_stage_key(title, cfg),
        "status": "quarantined", "reason": reason, "clips": [], "rejected": [], "warnings": [],
    })


def build(library_path: str | Path, out: str | Path, cfg: BuildConfig) -> BuildSummary:
    """Build (or resume) the shard set for a library. See the module docstring for the phases.

    Raises:
        ManifestError: the library manifest is invalid (nothing is written then).
        ValueError: the captioner model can't be loaded (nothing is written then).
    """
    from reelora.data import shards

    library = mf.load_library(library_path)
    if cfg.captioner:
        cap.check_captioner(cfg.captioner)
    out = Path(out)
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    as_of = cfg.as_of_date()
    previous = shards.read_index(out) if (out / shards.INDEX).exists() else {}
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

    todo = [t for t in eligible if load_staged(work, t, cfg) is None]
    summary.titles_skipped = len(eligible) - len(todo)
    summary.titles_staged = len(todo)
    _run_stage_jobs(library, todo, cfg, work)
    if cfg.num_nodes > 1:
        summary.assembled = False
        return summary

    results = {}
    for title in library.titles:
        if any(e["title_id"] == title.id for e in summary.excluded_titles):
            continue
        path = work / title.id / RESULT
        results[title.id] = json.loads(path.read_text(encoding="utf-8"))
    shards.assemble(out, library, cfg, results, summary, previous)
    return summary


__all__ = ["BuildConfig", "BuildSummary", "build", "stage_title"]

if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
