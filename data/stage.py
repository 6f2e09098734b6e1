"""Staging one title: probe, find shots, cut, score and filter, encode and caption its clips into OUT/work/TITLE_ID/.

What staging produced is a `StagedTitle`, written to `OUT/work/TITLE_ID/result.json` and read back
only through `StagedTitle.write` / `StagedTitle.read`. A title whose result matches the current
settings, manifest entry and source file (`load_staged`) is not staged again, so builds resume.

Decoding runs twice on purpose: pass 1 reads small frames for every grid point to find the shot
transitions (TransNetV2, or PySceneDetect) and the allowed windows, pass 2 decodes only the frames of
the planned clips at the output size (and scores their quality), so no full-size copy of a feature film
is ever held in memory.

Captioning with a VLM is a step of its own (`caption_title`): staging leaves the clips no sidecar
covers waiting (status "uncaptioned"), and the caption step decodes each stored clip, batches the
frames the VLM looks at and finishes the result ("done"). The local engine runs both steps in one
worker; `--engine ray` runs them on separate pools (CPU staging actors, GPU caption actors). Both
caption from the stored clip, the same bytes either way, so the shards do not depend on the engine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reelora.data import captions as cap
from reelora.data import clips as clipmod
from reelora.data import manifest as mf
from reelora.data import video
from reelora.data.config import BuildConfig
from reelora.data.shards import KEY, check_title_id, inside, read_json_bounded
from reelora.files import sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic

WORK = "work"  # OUT/work/TITLE_ID/: staged clips, the resume cache of `shards build`
RESULT = "result.json"
HEARTBEAT = "heartbeat"

__all__ = ["WORK", "OutputError", "StagedClip", "StagedTitle", "title_dir", "stage_title", "caption_title",
           "load_staged", "staged_status", "quarantine", "title_stage_key"]

UNCAPTIONED = "uncaptioned"  # a staged title whose VLM captions are still to be written (caption_title)


class OutputError(OSError):
    """Writing our own output failed (disk full, quota, read-only): the build stops, the title is not blamed."""

    def __init__(self, path: Path, exc: OSError):
        super().__init__(exc.errno, f"cannot write ({exc.strerror or exc})", str(path))


def title_dir(work: Path, title_id: str) -> Path:
    """`work/TITLE_ID`, for a checked title id only (ids come from manifests, the command line and files)."""
    return inside(work, check_title_id(title_id), f"{work}: title folder")


def _write(path: Path, data: bytes) -> None:
    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        raise OutputError(path, exc) from exc


@dataclass
class StagedClip:
    """One staged clip: its KEY.json metadata (the files are clips/KEY.mp4, .jpg) and dedup fingerprint."""

    meta: dict
    signature: str  # hex of clips.signature(): compared across titles when the shards are assembled


@dataclass
class StagedTitle:
    """What staging one title produced: OUT/work/TITLE_ID/result.json."""

    title_id: str
    path: str
    key: dict  # title_stage_key(): the inputs this result is valid for
    status: str = "done"  # or "quarantined" (then `reason` says why), or UNCAPTIONED (caption_title finishes it)
    reason: str = ""
    clips: list[StagedClip] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # clipmod.Rejected.to_dict(): windows left out, why
    warnings: list[str] = field(default_factory=list)
    probe: dict | None = None
    source_sha256: str | None = None
    scenes: int | None = None
    transitions: list[list[int]] = field(default_factory=list)  # [start, end) grid frames, clipmod.Transition
    seconds_decoded: float | None = None
    seconds_used: float | None = None

    def write(self, work: Path) -> None:
        path = title_dir(work, self.title_id) / RESULT
        try:
            write_json_atomic(path, asdict(self))
        except OSError as exc:
            raise OutputError(path, exc) from exc

    @classmethod
    def read(cls, work: Path, title_id: str) -> "StagedTitle | None":
        """The staged result of `title_id`, or None if there is none (or it is unreadable/outdated).

        A result whose title id or clip keys are not what staging writes counts as unreadable.
        """
        try:
            d = read_json_bounded(title_dir(work, title_id) / RESULT, "staged result")
            staged = cls(**{**d, "clips": [StagedClip(**c) for c in d["clips"]]})
            keys_ok = all(isinstance(c.meta.get("key"), str) and KEY.match(c.meta["key"])
                          and c.meta["key"].startswith(f"{title_id}_") for c in staged.clips)
            return staged if staged.title_id == title_id and keys_ok else None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None


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
            sidecar = sha256_file(title.captions)
        except OSError:
            sidecar = "unreadable"
    # json round-trip so tuples/floats compare the way a stored result holds them
    return json.loads(json.dumps({"settings": cfg.stage_settings(), "entry": title.entry_sha256, "source": source,
                                  "sidecar": sidecar}))


def load_staged(work: Path, title: mf.Title, cfg: BuildConfig) -> StagedTitle | None:
    """The staged result of a title if it is finished and still current, else None."""
    staged = StagedTitle.read(work, title.id)
    return staged if staged_status(staged, title, cfg) == "done" else None


def staged_status(staged: StagedTitle | None, title: mf.Title, cfg: BuildConfig) -> str | None:
    """What is left of a title's staging: None (stage it), UNCAPTIONED (caption it) or "done"."""
    if staged is None or staged.status not in ("done", UNCAPTIONED):
        return None  # quarantined titles are retried: the file may have been fixed
    return staged.status if staged.key == title_stage_key(title, cfg) else None


def quarantine(work: Path, title: mf.Title, cfg: BuildConfig, reason: str) -> None:
    """Record that `title` could not be staged (its worker crashed, hung or raised), and why."""
    title_dir(work, title.id).mkdir(parents=True, exist_ok=True)
    StagedTitle(title.id, str(title.path), title_stage_key(title, cfg), status="quarantined", reason=reason).write(work)


def stage_title(title: mf.Title, cfg: BuildConfig, trigger: str, work: Path, slot: int = 0) -> StagedTitle:
    """Turn one title into staged clips under `work/TITLE_ID/`; return (and write) its result.

    Clips waiting for a VLM caption leave the result UNCAPTIONED: `caption_title` finishes it.
    Never raises for bad media (or a bad caption sidecar): problems become a "quarantined" result
    with the reason.

    Raises:
        OutputError: writing under `work` failed (disk full ...): not the title's fault.
    """
    tdir = title_dir(work, title.id)
    try:
        if tdir.exists():
            shutil.rmtree(tdir)
        (tdir / "clips").mkdir(parents=True)
    except OSError as exc:
        raise OutputError(tdir, exc) from exc
    staged = StagedTitle(title.id, str(title.path), title_stage_key(title, cfg))
    try:
        _stage(title, cfg, trigger, tdir, staged, slot)
    except (video.MediaError, cap.SidecarError) as exc:
        staged.status, staged.reason, staged.clips = "quarantined", str(exc), []
    staged.write(work)
    return staged


def _stage(title: mf.Title, cfg: BuildConfig, trigger: str, tdir: Path, staged: StagedTitle, slot: int) -> None:
    heart = Heartbeat(tdir / HEARTBEAT)
    with heart.kept_alive():  # the probe is one call with its own timeout (--probe-timeout): not a stall
        info = video.probe(title.path, timeout=cfg.probe_timeout)
    if cfg.decoder == "pyav" and info.decoder != "pyav":
        info = dataclasses.replace(info, decoder="pyav", decord_error="PyAV chosen by --decoder pyav")
    staged.probe = info.to_dict()
    staged.source_sha256 = sha256_file(title.path, progress=heart.beat)
    windows = _plan_clips(title, cfg, info, staged, heart, slot)
    _cut_clips(title, cfg, trigger, info, windows, tdir, staged, heart, slot)
    if any(_awaits_caption(c) for c in staged.clips):
        staged.status = UNCAPTIONED
    staged.seconds_used = round(len(staged.clips) * cfg.num_frames / cfg.fps, 4)


def _plan_clips(title: mf.Title, cfg: BuildConfig, info, staged: StagedTitle, heart: "Heartbeat", slot: int) -> list:
    """Pass 1: scene cuts on small frames and which source frame each grid point shows -> clip windows."""
    from tqdm import tqdm

    fps = cfg.fps
    grid = video.grid_size(info, fps)
    cuts = clipmod.shot_detector(cfg.scene_detector, fps, cfg.scene_threshold, cfg.min_scene_seconds,
                                 cfg.transition_threshold)
    small = video.fit_size(info.width, info.height, 160)
    source_times = []
    report = video.DecodeReport()
    bar = tqdm(total=grid, desc=f"{title.id} shots", unit="frame", position=slot, leave=False, disable=None)
    for k, src_t, frame in video.read_frames(info, fps, range(grid), lambda f: video.resize(f, *small), report):
        cuts.add(k, frame)
        source_times.append(src_t)
        bar.update()
        heart.beat()
    bar.close()
    decoded = len(source_times)
    if decoded == 0:
        raise video.MediaError(f"no decodable frames ({report.error or 'empty video stream'})")
    if info.declared_duration > info.duration + 0.5:
        staged.warnings.append(
            f"file holds {info.duration:.2f}s of the {info.declared_duration:.2f}s its header declares "
            "(truncated?); clips were cut from the readable part"
        )
    if report.stopped_at is not None:
        staged.warnings.append(
            f"decoding stopped at {decoded / fps:.2f}s of {info.duration:.2f}s ({report.error}); "
            "clips were cut from the readable part"
        )
    transitions = cuts.finish()
    staged.scenes = len(transitions) + 1
    staged.transitions = [[t.start, t.end] for t in transitions]
    staged.seconds_decoded = round(decoded / fps, 4)

    forbidden = mf.forbidden_ranges(title)
    allowed, reasons = clipmod.frame_allowed(decoded, fps, np.asarray(source_times), forbidden)
    windows, rejected = clipmod.plan_windows(decoded, transitions, allowed, reasons, cfg.num_frames, fps)
    staged.rejected += [r.to_dict() for r in rejected]
    return windows


def _cut_clips(title: mf.Title, cfg: BuildConfig, trigger: str, info, windows: list, tdir: Path,
               staged: StagedTitle, heart: "Heartbeat", slot: int) -> None:
    """Pass 2: decode just the frames of the planned windows at the output size; filter, encode."""
    from tqdm import tqdm

    entries, problems = cap.load_sidecar(title.captions) if title.captions else ([], [])
    staged.warnings += problems
    rights = mf.rights_record(title)
    wanted = [w.start + i for w in windows for i in range(w.length)]
    frames: list[np.ndarray] = []
    window_iter = iter(windows)
    current = next(window_iter, None)
    bar = tqdm(total=len(windows), desc=f"{title.id} clips", unit="clip", position=slot, leave=False, disable=None)
    out_h, out_w = cfg.size_for(info.width, info.height)
    crop = lambda f: video.resize_center_crop(f, out_w, out_h)  # noqa: E731
    report = video.DecodeReport()
    for k, _, frame in video.read_frames(info, cfg.fps, wanted, crop, report):
        heart.beat()
        frames.append(frame)
        if len(frames) < current.length:
            continue
        clip = np.stack(frames)
        frames = []
        start_s, end_s = current.seconds(cfg.fps)
        scores = clipmod.quality_scores(clip, cfg.black_level)
        problem = clipmod.quality_problem(scores, cfg.black_level, cfg.black_fraction, cfg.static_level,
                                          cfg.max_motion, cfg.min_sharpness, cfg.max_clipped)
        if problem:
            staged.rejected.append(clipmod.Rejected(start_s, end_s, problem, clipmod.rounded(scores)).to_dict())
        else:
            staged.clips.append(_write_clip(title, cfg, trigger, tdir, current, clip, entries, rights, staged))
            staged.clips[-1].meta["quality"] = clipmod.rounded(scores)
        bar.update()
        current = next(window_iter, None)
    bar.close()
    if report.stopped_at is not None:
        staged.warnings.append(f"second decoding pass stopped early: {report.error}")


def _awaits_caption(staged_clip: StagedClip) -> bool:
    return staged_clip.meta["caption_source"] == "vlm" and not staged_clip.meta["caption"]


def caption_title(title: mf.Title, cfg: BuildConfig, trigger: str, work: Path, slot: int = 0) -> StagedTitle:
    """Write the VLM captions of an UNCAPTIONED staged title (from its stored clips) and mark it done.

    The captioner loads once per process (`captions.captioner_for`); `cfg.caption_batch` clips per
    batch, so memory holds the frames the VLM looks at for one batch, never a whole title.

    Raises:
        OutputError: writing the result failed (disk full ...).
        video.MediaError: a stored clip does not decode (OUT/work was changed under the build).
    """
    from tqdm import tqdm

    tdir = title_dir(work, title.id)
    staged = StagedTitle.read(work, title.id)
    if staged is None or staged.status != UNCAPTIONED:
        raise ValueError(f"{tdir / RESULT}: no staged result waiting for captions")
    heart = Heartbeat(tdir / HEARTBEAT)
    waiting = [c for c in staged.clips if _awaits_caption(c)]
    with heart.kept_alive():  # loading a 7B VLM from shared storage can take minutes: that is not a hang
        captioner = cap.captioner_for(cfg)
    bar = tqdm(total=len(waiting), desc=f"{title.id} captions", unit="clip", position=slot, leave=False,
               disable=None)
    for i in range(0, len(waiting), cfg.caption_batch):
        batch = waiting[i:i + cfg.caption_batch]
        picks = []
        for staged_clip in batch:
            path = tdir / "clips" / f"{staged_clip.meta['key']}.mp4"
            try:
                frames = video.decode_clip(path.read_bytes()).permute(0, 2, 3, 1).numpy()
            except (OSError, video.MediaError) as exc:
                raise video.MediaError(f"{path}: cannot read the staged clip to caption it: {exc}") from exc
            picks.append(captioner.pick(frames))
            heart.beat()
        for staged_clip, text in zip(batch, captioner.caption_batch(picks)):
            staged_clip.meta["caption"] = text
            staged_clip.meta["caption"] = _final_caption(title, cfg, trigger, staged_clip)
        heart.beat()  # a VLM batch on a slow device is progress too
        bar.update(len(batch))
    bar.close()
    staged.status = "done"
    staged.write(work)
    return staged


def _final_caption(title, cfg, trigger, staged_clip: StagedClip) -> str:
    """Trigger first, cleaned; an empty sidecar or VLM caption falls back to the template (and says so)."""
    caption = staged_clip.meta["caption"]
    # the trigger token goes into every caption, whatever wrote it: it is what the LoRA learns
    if caption and caption.strip():
        caption = cap.with_trigger(trigger, caption)
    else:
        caption = cap.template_caption(trigger, title.title or title.id, title.description)
        staged_clip.meta["caption_source"] = "template"
    return cap.clean_caption(caption, cfg.caption_max_chars)


def _write_clip(title, cfg, trigger, tdir, window, clip, entries, rights, staged) -> StagedClip:
    """Encode one clip and its metadata; a clip for the VLM gets its caption later (`caption_title`)."""
    import cv2

    fps = cfg.fps
    start_s, end_s = window.seconds(fps)
    caption, source = cap.sidecar_caption(entries, start_s, end_s), "sidecar"
    if caption is None:
        caption, source = "", ("vlm" if cfg.captioner else "template")
    key = f"{title.id}_{window.start:07d}"
    mp4 = video.encode_clip(clip, fps, crf=cfg.crf, preset=cfg.preset)
    _write(tdir / "clips" / f"{key}.mp4", mp4)
    if cfg.thumbnails:
        ok, jpg = cv2.imencode(".jpg", clip[len(clip) // 2][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
        _write(tdir / "clips" / f"{key}.jpg", jpg.tobytes())
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
        "source_sha256": staged.source_sha256,
        "clip_sha256": sha256_bytes(mp4),
    }
    staged_clip = StagedClip(meta, clipmod.signature(clip).tobytes().hex())
    if source != "vlm":
        meta["caption"] = _final_caption(title, cfg, trigger, staged_clip)
    return staged_clip


class Heartbeat:
    """Touches a file while a title makes progress, so the parent can tell slow from hung."""

    def __init__(self, path: Path, every: float = 1.0):
        self.path, self.every, self._last = path, every, 0.0
        self.beat()

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            try:
                self.path.touch()
            except OSError as exc:
                raise OutputError(self.path, exc) from exc
            self._last = now

    @contextlib.contextmanager
    def kept_alive(self):
        """Beat from a thread while the body runs one long call that cannot report progress (a model load)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.every):
                try:
                    self.path.touch()
                except OSError:
                    return  # the body's own writes will report the disk

        thread = threading.Thread(target=beat, daemon=True, name="heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
