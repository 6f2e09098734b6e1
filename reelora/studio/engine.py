"""The studio's model side: one Sampler with every adapter attached, strengths mixed per request.

No second sampling path: each clip is `Sampler.generate` + `Sampler.save` (models/sample.py), so a studio
clip has the frames and the provenance `reelora sample` gives for the same model, adapters at the same
strengths, prompt, seed and settings. Each request switches the sampler's adapters (`Sampler.use_adapters`):
those at strength 0 are off (peft computes only active adapters), and the provenance names exactly the
active ones at their strengths.

The backbone loads once. Requests run one at a time (a lock here; the page's queue also has concurrency 1).
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from reelora.files import write_text_atomic
from reelora.models import adapters as adapter_io
from reelora.models.sample import Clip, ClipRequest, SampleResult, Sampler, check_out_dir
from reelora.models.settings import SampleSettings
from reelora.studio.catalog import Entry, find_adapters

log = logging.getLogger(__name__)

StepReport = Callable[[int, int], None]
"""Called as (denoising steps done, steps in this clip) after each step."""


@dataclass
class Panel:
    """One clip of a compare grid: its label and the adapter strengths it was sampled with."""

    label: str
    strengths: dict[str, float]


class Studio:
    """A backbone with the adapters found under a folder, sampling into an output folder.

    Args:
        model: as for `Sampler` (tiny-wan, a diffusers directory, a cached hub id).
        adapters_dir: searched by `catalog.find_adapters`; unusable files are kept in `entries` with the reason.
        out_dir: where clips (mp4 + JSON sidecar) and compare grids are written; the gallery lists it.
        sampler_kwargs: device, dtype, model_seed, cpu_offload, vae_tiling, vae_slicing for `Sampler`.

    Raises:
        FileNotFoundError / ValueError: a missing adapters folder or an unusable output folder (named).
    """

    def __init__(self, model: str, adapters_dir: str | Path, out_dir: str | Path, **sampler_kwargs):
        from reelora.models.registry import resolve

        self.out_dir = check_out_dir(out_dir, "--out")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.entries = find_adapters(adapters_dir, resolve(model).family)
        self.sampler = Sampler(model, [], progress=False, **sampler_kwargs)
        self.adapters: dict[str, Entry] = {}
        for e in self.entries:  # attach each alone: one adapter for another backbone must not stop the rest
            if e.adapter is None:
                continue
            try:
                self.sampler.add_adapter(e.key, e.experts or [e.adapter])  # checked against the backbone before it loads
            except adapter_io.AdapterError as exc:
                e.adapter, e.experts, e.error = None, [], str(exc)
                continue
            self.adapters[e.key] = e
        self.defaults: SampleSettings = self.sampler.defaults
        self._lock = threading.Lock()
        for e in self.entries:
            if e.error:
                log.warning("studio: adapter %s not offered: %s", e.path, e.error)

    # -- requests ---------------------------------------------------------------------------------------------

    def request(self, prompt: str, seed: int, **settings) -> ClipRequest:
        """A resolved request (family defaults for unset settings); raises ValueError naming a bad setting."""
        settings = {k: v for k, v in settings.items() if v is not None and v != ""}
        return self.sampler.resolve(ClipRequest(prompt=prompt, seed=int(seed), **settings))

    def generate(self, request: ClipRequest, strengths: dict[str, float], *, tag: str = "",
                 on_step: StepReport | None = None) -> SampleResult:
        """Sample one clip with the adapters at `strengths` (key -> strength; 0 or absent = off) and save it."""
        return self._render(request, strengths, tag, on_step)[1]

    def compare(self, requests: Sequence[ClipRequest], strengths: dict[str, float], *,
                on_clip: Callable[[int, int, str], None] | None = None,
                on_step: StepReport | None = None) -> tuple[list[list[SampleResult]], Path, list[Panel]]:
        """Each request as base, each active adapter alone, and (with several) their mix; the same seed each.

        Returns the saved clips (one row per request), a grid mp4 in `out_dir/compare/` (rows = requests,
        columns = panels, side by side so they play in step; its JSON sidecar names each clip and holds
        their provenance) and the panels.
        """
        from reelora.models import media

        panels = compare_panels(strengths)
        rows, grid = [], []
        for r, req in enumerate(requests):
            row, frames = [], []
            for c, panel in enumerate(panels):
                if on_clip:
                    on_clip(r * len(panels) + c, len(requests) * len(panels), panel.label)
                clip, saved = self._render(req, panel.strengths, _slug(panel.label), on_step)
                row.append(saved)
                frames.append(clip.frames)
            rows.append(row)
            grid.append(np.concatenate(frames, axis=2))  # panels side by side, along the width
        folder = self.out_dir / "compare"
        folder.mkdir(exist_ok=True)
        first = requests[0]
        path = folder / f"{self._new_name(first, 'compare', folder)}.mp4"
        summary = {"compare": {"columns": [p.label for p in panels], "rows": [r.prompt for r in requests],
                               "clips": [[res.mp4.name for res in row] for row in rows]},
                   "seed": first.seed, "prompt": " | ".join(r.prompt for r in requests)}
        media.write_mp4(path, np.concatenate(grid, axis=1), first.fps, provenance=summary)
        # the grid's sidecar: which clip is where, and each clip's own provenance
        full = {**summary, "panels": [[res.provenance for res in row] for row in rows]}
        write_text_atomic(path.with_suffix(".json"), json.dumps(full, indent=2, sort_keys=True) + "\n")
        return rows, path, panels

    def _render(self, request: ClipRequest, strengths: dict[str, float], tag: str,
                on_step: StepReport | None) -> tuple[Clip, SampleResult]:
        with self._lock:
            self._mix(strengths)
            with _steps_reported(self.sampler.pipe, on_step):
                clip = self.sampler.generate(request)
            return clip, self.sampler.save(clip, self.out_dir, name=self._new_name(request, tag))

    # -- the gallery ------------------------------------------------------------------------------------------

    def clips(self, limit: int = 48) -> list[tuple[Path, dict]]:
        """Finished clips in the output folder (mp4 with its sidecar), newest first."""
        found = []
        for mp4 in self.out_dir.glob("*.mp4"):
            sidecar = mp4.with_suffix(".json")
            if not sidecar.is_file():
                continue
            try:
                prov = json.loads(sidecar.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being written by another request, or not ours
            found.append((mp4.stat().st_mtime, mp4, prov))
        found.sort(key=lambda t: (t[0], t[1].name), reverse=True)
        return [(mp4, prov) for _, mp4, prov in found[:limit]]

    # -- helpers ----------------------------------------------------------------------------------------------

    def _mix(self, strengths: dict[str, float]) -> None:
        """Activate the adapters with a non-zero strength at that strength (the sampler checks names and strengths)."""
        self.sampler.use_adapters(strengths)

    def _new_name(self, req: ClipRequest, tag: str, folder: Path | None = None) -> str:
        """`<UTC time>-<prompt slug>-s<seed>[-tag]`, unique in `folder` (default the output folder)."""
        folder = folder or self.out_dir
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        base = f"{stamp}-{_slug(req.prompt)[:32]}-s{req.seed}" + (f"-{tag}" if tag else "")
        name, n = base, 1
        while (folder / f"{name}.mp4").exists() or (folder / f"{name}.json").exists():
            n += 1
            name = f"{base}-{n}"
        return name


def compare_panels(strengths: dict[str, float]) -> list[Panel]:
    """Base, then each active adapter alone, then all of them together when there are several."""
    active = {k: float(s) for k, s in strengths.items() if float(s) != 0.0}
    panels = [Panel("base", {})]
    panels += [Panel(f"{k} x{s:g}", {k: s}) for k, s in active.items()]
    if len(active) > 1:
        panels.append(Panel("mix", dict(active)))
    return panels


def new_seed(seed: int | float | None, lock: bool) -> int:
    """The seed a request uses: the given one when locked (or first set), else a fresh random one."""
    if lock and seed is not None:
        return int(seed)
    import secrets

    return secrets.randbelow(2**31)  # short enough to read out and type back; any int up to MAX_SEED works


@contextmanager
def _steps_reported(pipe, on_step: StepReport | None):
    """Report each denoising step through the pipeline's own progress-bar hook (diffusers `progress_bar`).

    The sampler's `callback_on_step_end` is its NaN guard, so the page's progress rides on the bar the
    pipeline already opens over its steps (`with self.progress_bar(total=steps) as bar: ... bar.update()`);
    nothing in the sampling code changes.
    """
    if on_step is None:
        yield
        return

    class Steps:
        def __init__(self, total):
            self.total, self.done = int(total), 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n: int = 1):
            self.done += n
            on_step(self.done, self.total)

    def progress_bar(iterable=None, total=None):
        if iterable is not None:  # the Wan/LTX loops pass `total`; anything else keeps diffusers' own bar
            return type(pipe).progress_bar(pipe, iterable=iterable, total=total)
        return Steps(total)

    pipe.progress_bar = progress_bar  # an instance attribute over the method, removed again below
    try:
        yield
    finally:
        pipe.__dict__.pop("progress_bar", None)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "clip"


__all__ = ["Studio", "Panel", "compare_panels", "new_seed"]
