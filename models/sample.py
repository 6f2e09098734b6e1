"""Sampling: studio-style clips from prompts with zero or more LoRA adapters, reproducible, with provenance.

The notebook API mirrors `reelora sample`:

    from reelora.models.sample import Sampler, sample_clips

    results = sample_clips("tiny-wan", ["a red fox in the snow"], loras=["out/adapter:0.8"], out="samples")

    sampler = Sampler("tiny-wan", loras=[("out/adapter", 1.0)], fuse=True)
    clip = sampler.generate("a red fox in the snow", seed=3)  # clip.frames: uint8 [F, H, W, 3]
    sampler.save(clip, "samples")                           # samples/<name>.mp4 + <name>.json

    sampler = Sampler("tiny-wan")                           # one backbone, adapters switched per clip
    sampler.add_adapter("fox", "out/adapter")
    sampler.use_adapters({"fox": 0.8})                     # {} = the base model exactly

Each clip is the diffusers pipeline of the model's spec, run with a CPU `torch.Generator` seeded from
the request, so the same model, adapters, prompt, seed and settings give identical frames: bit for bit in
any process on the same machine, because the sampler's math runs in `reproducible_math` (see there why).
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from reelora.dtypes import parse_dtype
from reelora.files import write_text_atomic
from reelora.models import adapters as adapter_io
from reelora.models import media
from reelora.models.settings import SampleSettings, check_value, setting_names

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(kw_only=True)
class ClipRequest(SampleSettings):
    """One clip to sample: a prompt, its seed and file name, and the sampling settings (None = family default)."""

    prompt: str
    seed: int = 0
    """Seeds a CPU torch.Generator for the initial noise: same seed + settings -> same frames."""
    name: str | None = None
    """Output file stem; default `<index>-<prompt slug>`."""

    def __post_init__(self):
        super().__post_init__()
        check_value("seed", self.seed)
        if self.name is not None and not _NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r} must be a plain file stem (letters, digits, . _ -)")

    @classmethod
    def from_dict(cls, data: dict, where: str = "request") -> "ClipRequest":
        """Build from a JSON object; accepts `frames` for num_frames and `size` as 'HxW' or [H, W].

        Raises:
            ValueError: unknown keys, a missing prompt or an out-of-range number, naming `where`
                (e.g. 'prompts.jsonl:3') and the key.
        """
        data = dict(data)
        if "frames" in data:
            data["num_frames"] = data.pop("frames")
        if "size" in data:
            data["height"], data["width"] = _parse_size(data.pop("size"), where)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(sorted(known | {'frames', 'size'}))}")
        if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
            raise ValueError(f"{where}: needs a non-empty 'prompt' string")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc


def resolve_request(request: ClipRequest, *, defaults: SampleSettings, pipe: Any, size_multiple: int,
                    model: str) -> ClipRequest:
    """Fill unset settings from `defaults` and check frames/size fit the pipeline's VAE and the family.

    Raises:
        ValueError: naming the clip and the setting that does not fit.
    """
    req = replace(request, **request.filled(defaults))
    where = f"clip {req.name or repr(req.prompt[:40])}"
    t_ratio = int(getattr(pipe, "vae_scale_factor_temporal", None) or getattr(pipe, "vae_temporal_compression_ratio", 1))
    if (req.num_frames - 1) % t_ratio:
        raise ValueError(f"{where}: num_frames={req.num_frames} does not fit {model}; it must be "
                         f"1 + a multiple of {t_ratio} (e.g. {t_ratio + 1}, {2 * t_ratio + 1}, {4 * t_ratio + 1})")
    for key in ("height", "width"):
        v = getattr(req, key)
        if v % size_multiple:
            raise ValueError(f"{where}: {key}={v} must be a positive multiple of {size_multiple} for {model}")
    return req


class SampleError(RuntimeError):
    """A clip that came out NaN/inf (latents or decoded frames); nothing is written for it."""


@torch.no_grad()
def encode_request(pipe: Any, req: ClipRequest, max_text_len: int, keys: Sequence[str],
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The pipeline's own prompt encoding of a resolved request, as the keywords `render(text=...)` passes.

    The negative prompt is encoded only when guidance > 1 (as the pipeline itself does). Encoding once up
    front lets the text encoder be freed before sampling (validation during training).

    Args:
        keys: what the pipeline's `encode_prompt` returns, in order (the spec's `prompt_embeds_keys`).
        device: where the text encoder runs; the tensors are returned on the CPU.
    """
    out = pipe.encode_prompt(prompt=req.prompt, negative_prompt=req.negative_prompt,
                             do_classifier_free_guidance=req.guidance > 1.0, max_sequence_length=max_text_len,
                             device=torch.device(device))
    return {k: t.cpu() for k, t in zip(keys, out, strict=True) if t is not None}


@torch.no_grad()
def render(pipe: Any, req: ClipRequest, max_text_len: int, text: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """Run `pipe` for a resolved request: uint8 frames [F, H, W, 3]. The sampler and validation both call this.

    `text`: the request's prompt embeddings from `encode_request` (on the pipeline's device), used instead of
    encoding `req.prompt` and `req.negative_prompt` (the pipeline then needs no text encoder).

    Raises:
        SampleError: the latents are NaN/inf after a denoising step (named), or the decoded frames are.
            Unchecked, uint8 conversion turns them into a black clip that looks like a result.
    """
    def finite_latents(pipe, i, t, kwargs):  # one isfinite per step; returns the latents untouched
        if not torch.isfinite(kwargs["latents"]).all():
            raise SampleError(f"the latents are NaN/inf after denoising step {i + 1} of {req.steps}")
        return kwargs

    # A CPU generator gives the same initial noise on every device (diffusers moves it over).
    generator = torch.Generator("cpu").manual_seed(int(req.seed))
    prompts = {"prompt": req.prompt, "negative_prompt": req.negative_prompt} if text is None else text
    out = pipe(
        **prompts, num_frames=req.num_frames,
        height=req.height, width=req.width, num_inference_steps=req.steps, guidance_scale=req.guidance,
        generator=generator, output_type="np", callback_on_step_end=finite_latents,
        # Wan's cross-attention sees the padding: sample at the text length the model trained with.
        max_sequence_length=max_text_len,
    )
    frames = np.asarray(out.frames[0])
    if not np.isfinite(frames).all():
        raise SampleError("the decoded frames are NaN/inf")
    return media.to_uint8(frames)


@contextmanager
def reproducible_math(enabled: bool = True) -> Iterator[None]:
    """Run torch with one intra-op thread, oneDNN off and deterministic algorithms; restore all on exit.

    Why: ATen splits an elementwise op over its threads, and each thread's chunk ends in a scalar tail
    whose math differs from the vectorised body in the last bit (GELU's tanh form, in every Wan/LTX
    feed-forward, measured: 3 threads differ from 1, 2 and 4). So frames depend on the thread count, which
    torch takes from the CPUs a process may use (affinity, cgroup cpusets) and OMP_NUM_THREADS, and the
    repo's demo picks by machine load: the same command could give other frames in another process. One
    thread fixes the split; it costs little where sampling on a CPU happens (tiny models: on a shared 2-core
    box under load, a 9x64x64 tiny-wan clip took 3 s with one thread, 23 s with two). oneDNN is off because its convolutions (the VAE's) were seen to differ between
    processes (tests/train/conftest.py). On CUDA, deterministic algorithms and no cuDNN autotuning.
    """
    if not enabled:
        yield
        return
    saved = (torch.get_num_threads(), torch.backends.mkldnn.enabled, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS initialises (CUDA determinism)
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        threads, mkldnn, det, warn_only, bench = saved
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.benchmark = bench


def check_out_dir(out: str | Path, flag: str = "out") -> Path:
    """Refuse an output folder that is a file or cannot be created, before any model loads (creates nothing).

    Raises:
        ValueError: naming `flag`, the folder and what is in the way.
    """
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a directory; give a folder for the clips")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: cannot create it, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write into {parent} (permission denied)")
    return path


@dataclass
class Clip:
    """A sampled clip: uint8 frames [F, H, W, 3], the fully resolved request, and its provenance record."""

    frames: np.ndarray
    request: ClipRequest
    provenance: dict


@dataclass
class SampleResult:
    """Where one clip was written."""

    name: str
    mp4: Path
    sidecar: Path
    provenance: dict = field(repr=False)


class Sampler:
    """A backbone with its adapters attached, ready to sample many clips.

    More adapters can be attached to the loaded backbone (`add_adapter`) and switched per clip
    (`use_adapters`), so a studio or a sweep loads the backbone once. `adapters`, `adapter_names` and
    `warnings` always describe the adapters active now: what the provenance of the next clip records.

    Args:
        model: `tiny-wan`, `tiny-ltx`, a local diffusers directory, or a hub id (already cached when offline).
        loras: adapters as 'PATH[:SCALE]' strings or (path, scale) pairs; a directory means its
            `pytorch_lora_weights.safetensors`. Scales mix them; scale 0 reproduces the base exactly.
            They are attached under their path as given (`attached`), active at their scales.
        fuse: merge the adapters into the weights (faster; same frames within float tolerance). A fused
            sampler cannot attach or switch adapters.
        device: 'cuda', 'cpu', ...; default cuda when available.
        dtype: transformer/text-encoder dtype; default bfloat16 on GPU, float32 on CPU.
        cpu_offload: diffusers `enable_model_cpu_offload` (GPU only; ignored with a warning on CPU).
        vae_tiling: diffusers `vae.enable_tiling()` (decode large frames tile by tile).
        vae_slicing: diffusers `vae.enable_slicing()` (decode a batch one sample at a time).
        progress: show tqdm bars over clips and denoising steps.
        model_seed: seed that builds a built-in tiny backbone (must match the one the adapter trained on).
        deterministic: the same frames, bit for bit, in any process on this machine (`reproducible_math`:
            one torch thread, oneDNN off, deterministic algorithms) while loading and sampling; False uses
            every thread (faster on an idle many-core CPU; frames may differ in the last bits between processes).
        sign_cert, sign_key: PEM certificate chain and private key that sign each clip's C2PA manifest;
            default REELORA_SIGN_CERT/REELORA_SIGN_KEY, else a local development certificate (untrusted).

    Raises:
        AdapterError: an adapter that is not safetensors, has NaN/inf, or does not fit the backbone.
        CredentialsError: a signing certificate/key that cannot be used.
    """

    def __init__(self, model: str, loras: str | Path | Iterable[str | Path | tuple[str, float]] = (), *, fuse: bool = False,
                 device: str | None = None, dtype: str | torch.dtype | None = None, cpu_offload: bool = False,
                 vae_tiling: bool = False, vae_slicing: bool = False, progress: bool = True, model_seed: int = 0,
                 deterministic: bool = True, sign_cert: str | Path | None = None, sign_key: str | Path | None = None):
        from reelora.models.credentials import resolve_signing_key
        from reelora.models.registry import load_model, resolve, sample_defaults

        self.model = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = parse_dtype(dtype, "dtype") if dtype is not None else (
            torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.progress = progress
        spec = resolve(model)
        if isinstance(loras, (str, Path)):  # one adapter given bare, not in a list
            loras = [loras]
        # Adapters are read and checked for format/NaN before the (possibly large) backbone loads.
        # `attached`: every adapter on the backbone by the name `use_adapters` takes, as read_adapters gives it:
        # one Adapter per expert of a two-expert backbone (models/wan22.py), so a folder's experts switch together.
        self.attached: dict[str, list[adapter_io.Adapter]] = {}
        for path, scale in (_lora_pair(x) for x in loras):
            key, n = path, 1
            while key in self.attached:  # the same file twice (at two scales) is two adapters
                n += 1
                key = f"{path}#{n}"
            self.attached[key] = adapter_io.read_adapters(path, scale, spec.family)
        self.adapters = [a for group in self.attached.values() for a in group]
        # The attached adapters in use, by name, at their strengths (the constructor's at theirs, 0 included).
        self.strengths = {key: group[0].scale for key, group in self.attached.items()}
        self.fuse = fuse
        self.signing = resolve_signing_key(sign_cert, sign_key)  # a bad certificate fails before the model loads

        offload = cpu_offload and self.device.type != "cpu"
        if cpu_offload and not offload:
            log.warning("cpu_offload ignored: the model already runs on the CPU")
        self.deterministic = deterministic
        with reproducible_math(deterministic):  # building a tiny backbone and fusing are math too
            self.spec, self.comps = load_model(model, dtype=self.dtype, device="cpu" if offload else self.device,
                                               seed=model_seed)
            self.pipe = self.spec.pipeline(self.comps)
            self.warnings = [w for a in self.adapters for w in _lineage_mismatch(a, model, self.comps.revision)]
            for w in self.warnings:
                log.warning(w)
            self.adapter_names = adapter_io.attach(self.pipe, self.adapters, model_name=model)
            self.fused = bool(fuse and self.adapter_names)
            if self.fused:
                adapter_io.fuse(self.pipe, self.adapter_names)
        self.memory = {"cpu_offload": offload, "vae_tiling": vae_tiling, "vae_slicing": vae_slicing}
        if offload:
            self.pipe.enable_model_cpu_offload(device=self.device)
        if vae_tiling:
            self.pipe.vae.enable_tiling()
        if vae_slicing:
            self.pipe.vae.enable_slicing()
        self.pipe.set_progress_bar_config(disable=not progress, leave=False, desc="steps", position=1)
        self.defaults = sample_defaults(model, self.spec)

    # -- switching adapters -------------------------------------------------------------------------------

    def add_adapter(self, name: str, lora: str | Path | adapter_io.Adapter | Sequence[adapter_io.Adapter]) -> list[adapter_io.Adapter]:
        """Attach one more adapter to the loaded backbone, off until `use_adapters` names it.

        Args:
            name: what `use_adapters` calls it (a label of the caller's: a studio key, 'rank 4').
            lora: an adapter file or folder (a two-expert backbone's folder gives one Adapter per expert), or
                Adapters already read (`adapter_io.read_adapter(s)`).

        Returns:
            The attached Adapters (one per expert).

        Raises:
            ValueError: the name is taken. AdapterError: the file is unusable or does not fit this backbone
                (checked before anything loads: the backbone is unchanged).
            RuntimeError: a fused sampler.
        """
        self._check_switchable("attach an adapter")
        if name in self.attached:
            raise ValueError(f"adapter name {name!r} is already attached; attached: {', '.join(self.attached)}")
        if isinstance(lora, adapter_io.Adapter):
            lora = [lora]
        elif isinstance(lora, (str, Path)):
            lora = adapter_io.read_adapters(lora, 1.0, self.spec.family)
        # Copies: peft's adapter name is set on them, and the caller's Adapter may be attached elsewhere too.
        # A peft name must be new to the denoiser (the constructor's are lora0, lora1, ...).
        taken = {n for c in ("transformer", "transformer_2")
                 for n in (getattr(getattr(self.pipe, c, None), "peft_config", None) or {})}
        free = (f"lora{i}" for i in range(len(taken) + len(lora) + 1) if f"lora{i}" not in taken)
        group = [replace(a, name=next(free)) for a in lora]
        with reproducible_math(self.deterministic):
            adapter_io.attach(self.pipe, group, model_name=self.model)  # validates all before loading any
            self.attached[name] = group
            self._apply()  # attach activated the new adapter alone: back to the strengths in use
        for w in (w for a in group for w in _lineage_mismatch(a, self.model, self.comps.revision)):
            log.warning(w)
        return group

    def use_adapters(self, strengths: Mapping[str, float]) -> None:
        """Choose the attached adapters the next clips use, by name, at their strengths (0 or absent = off).

        None active gives the base model exactly (peft's layers pass the base output through); one adapter
        at strength s gives the frames of a Sampler built with that adapter alone at scale s, bit for bit.
        Active adapters add up in the order they were attached, whatever the order of `strengths`.

        Raises:
            ValueError: an unknown name (the attached ones are listed). AdapterError: an out-of-range strength,
                or a DoRA adapter at a strength other than 1. Nothing changes on error.
            RuntimeError: a fused sampler.
        """
        self._check_switchable("switch adapters")
        unknown = sorted(set(strengths) - set(self.attached))
        if unknown:
            raise ValueError(f"unknown adapter(s) {', '.join(unknown)}; attached: {', '.join(self.attached) or 'none'}")
        active = {k: float(strengths[k]) for k in self.attached if k in strengths and float(strengths[k]) != 0.0}
        for key, s in active.items():
            for a in self.attached[key]:
                adapter_io.check_scales(a.path, s, None, {})
                if s != 1.0 and any(k.endswith(".lora_magnitude_vector") for k in a.state_dict):
                    raise adapter_io.AdapterError(
                        f"adapter {a.path}: a DoRA adapter mixes at strength 1 only (peft does not scale its "
                        f"magnitude vectors), got {s:g}")
        self.strengths = active
        self._apply()

    def _apply(self) -> None:
        """Set peft's active adapters and weights on each denoiser from `strengths`; record them for provenance."""
        used = [replace(a, scale=s) for key, s in self.strengths.items() for a in self.attached[key]]
        for c in sorted({a.component for group in self.attached.values() for a in group}):
            denoiser = getattr(self.pipe, c)  # each expert of a two-expert backbone mixes its own adapters
            mine = [a for a in used if a.component == c]
            if mine:
                denoiser.enable_lora()
                denoiser.set_adapters([a.name for a in mine], [a.scale for a in mine])
            else:
                denoiser.disable_lora()  # the base model exactly: LoRA layers pass the base output through
        self.adapters = used
        self.adapter_names = [a.name for a in used]
        self.warnings = [w for a in used for w in _lineage_mismatch(a, self.model, self.comps.revision)]

    def _check_switchable(self, what: str) -> None:
        if self.fuse:
            raise RuntimeError(f"cannot {what} on a fused sampler: Sampler(fuse=True) merged its adapters into the "
                               f"backbone's weights; build it with fuse=False to switch adapters per clip")

    # -- one clip -----------------------------------------------------------------------------------------

    def resolve(self, request: ClipRequest | str, **overrides: Any) -> ClipRequest:
        """Fill unset fields from the family defaults and check frames/size fit the backbone.

        Raises:
            ValueError: naming the clip and the setting that does not fit.
        """
        req = ClipRequest(prompt=request) if isinstance(request, str) else request
        return resolve_request(replace(req, **overrides), defaults=self.defaults, pipe=self.pipe,
                               size_multiple=self.spec.size_multiple, model=self.model)

    def generate(self, request: ClipRequest | str, **overrides: Any) -> Clip:
        """Sample one clip. `overrides` are ClipRequest fields (seed=, num_frames=, ...)."""
        req = self.resolve(request, **overrides)
        started = time.time()
        try:
            with reproducible_math(self.deterministic):
                frames = render(self.pipe, req, self.comps.extra["max_text_len"])
        except SampleError as exc:
            used = ", ".join(f"{a.path} (scale {a.scale:g})" for a in self.adapters) or "no adapters"
            raise SampleError(
                f"clip {req.name or repr(req.prompt[:40])} (seed {req.seed}) on {self.model} with {used}: {exc}; "
                f"nothing was written. An adapter's weights, lora_alpha or scale are too large for this backbone"
                f"{' (or float16 overflowed: try --dtype bf16)' if self.dtype == torch.float16 else ''}") from None
        return Clip(frames=frames, request=req, provenance=self.provenance(req, started))

    def save(self, clip: Clip, out_dir: str | Path, name: str | None = None) -> SampleResult:
        """Write `<out_dir>/<name>.mp4` (H.264, provenance in its tags and its signed C2PA manifest) and `<name>.json`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = name or clip.request.name or _slug_name(0, clip.request.prompt)
        prov = {**clip.provenance, "name": name, "file": f"{name}.mp4"}
        mp4 = media.write_mp4(out / f"{name}.mp4", clip.frames, clip.request.fps, provenance=prov, sign=self.signing)
        sidecar = out / f"{name}.json"
        write_text_atomic(sidecar, json.dumps(prov, indent=2, sort_keys=True) + "\n")
        return SampleResult(name=name, mp4=mp4, sidecar=sidecar, provenance=prov)

    # -- many clips ---------------------------------------------------------------------------------------

    def run(self, requests: Sequence[ClipRequest], out_dir: str | Path, contact_sheet: bool = True) -> list[SampleResult]:
        """Sample and save every request (progress bar over clips), then write `contact_sheet.png`."""
        from tqdm.auto import tqdm

        check_out_dir(out_dir)
        resolved = [self.resolve(r) for r in requests]  # fail on a bad line before sampling anything
        names = _unique_names(resolved)
        results, sheet = [], []
        for req, name in tqdm(list(zip(resolved, names)), desc="clips", disable=not self.progress, position=0):
            clip = self.generate(req)
            results.append(self.save(clip, out_dir, name=name))
            sheet.append((f"{name}: {req.prompt}", clip.frames))
        if contact_sheet and sheet:
            media.contact_sheet(Path(out_dir) / "contact_sheet.png", sheet)
        return results

    # -- provenance -----------------------------------------------------------------------------------------

    def provenance(self, req: ClipRequest, started: float) -> dict:
        """The record written beside each clip and into its mp4 tags."""
        import diffusers
        import peft

        from reelora import __version__

        sched = self.pipe.scheduler
        return {
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "seed": req.seed,
            "steps": req.steps,
            "guidance": req.guidance,
            "size": {"height": req.height, "width": req.width},
            "frames": req.num_frames,
            "fps": req.fps,
            "scheduler": {"class": type(sched).__name__, "config": _jsonable({k: v for k, v in sched.config.items() if not k.startswith("_")})},
            "base_model": {"id": self.model, "family": self.spec.family, "revision": self.comps.revision,
                           "pipeline": type(self.pipe).__name__},
            "adapters": [a.provenance() for a in self.adapters],
            "fused": self.fused,
            "deterministic": self.deterministic,
            "warnings": self.warnings,
            "memory": self.memory,
            "content_credentials": self.signing.describe(),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "reelora_version": __version__,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__},
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 3),
        }


def sample_clips(model: str, prompts: str | Sequence[str | dict | ClipRequest] | None = None, *,
                 prompts_file: str | Path | None = None, loras: Iterable[str | tuple[str, float]] = (),
                 out: str | Path = "samples", seed: int = 0, settings: SampleSettings | None = None,
                 fuse: bool = False, contact_sheet: bool = True, **kwargs: Any) -> list[SampleResult]:
    """`reelora sample` as a function: sample every prompt, write mp4 + JSON sidecars + contact sheet to `out`.

    Args:
        prompts: one prompt, or a list of prompts / dicts (JSONL-style overrides) / ClipRequests.
        prompts_file: plain text (one prompt per line) or JSONL (see `read_prompts`), instead of `prompts`.
        seed, settings: the defaults for every prompt (a file line or dict may override them); SampleSettings
            fields may also be given as keywords (`steps=2`).
        kwargs: other keywords go to `Sampler` (device, dtype, cpu_offload, vae_tiling, vae_slicing, progress,
            deterministic, sign_cert, sign_key).
    """
    if (prompts is None) == (prompts_file is None):
        raise ValueError("give exactly one of prompts or prompts_file")
    given = {k: kwargs.pop(k) for k in setting_names() if k in kwargs}
    settings = replace(settings or SampleSettings(), **given)
    base = {**{k: getattr(settings, k) for k in setting_names()}, "seed": seed}
    check_value("seed", seed)
    requests = read_prompts(prompts_file, base) if prompts_file is not None else build_requests(prompts, base)
    check_out_dir(out)  # a bad folder fails now, not after the backbone has loaded
    sampler = Sampler(model, loras, fuse=fuse, **kwargs)
    return sampler.run(requests, out, contact_sheet=contact_sheet)


def build_requests(prompts: str | Sequence[str | dict | ClipRequest], base: dict) -> list[ClipRequest]:
    """Prompts (strings, override dicts or ClipRequests) -> requests with `base` settings underneath."""
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, ClipRequest):
            out.append(p)
        elif isinstance(p, dict):
            out.append(ClipRequest.from_dict({**base, **p}, where=f"prompts[{i}]"))
        else:
            out.append(ClipRequest.from_dict({**base, "prompt": p}, where=f"prompts[{i}]"))
    if not out:
        raise ValueError("no prompts given")
    return out


def read_prompts(path: str | Path, base: dict | None = None) -> list[ClipRequest]:
    """A prompts file: plain text (one prompt per line; blank lines and `#` comments skipped), or JSONL.

    JSONL (a `.jsonl` file, or every line starting with `{`): one object per line with `prompt` and
    optional overrides `negative_prompt`, `seed`, `frames`/`num_frames`, `size` ('HxW' or [H, W]) or
    `height`/`width`, `steps`, `guidance`, `fps`, `name`.

    Raises:
        FileNotFoundError / ValueError: naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    base = {k: v for k, v in (base or {}).items() if v is not None}
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    lines = [(n, s) for n, s in lines if s and not s.startswith("#")]
    if not lines:
        raise ValueError(f"prompts file {path} has no prompts")
    jsonl = path.suffix.lower() == ".jsonl" or all(s.startswith("{") for _, s in lines)
    requests = []
    for n, s in lines:
        where = f"{path}:{n}"
        if jsonl:
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: each JSONL line must be an object with a 'prompt'")
            requests.append(ClipRequest.from_dict({**base, **obj}, where=where))
        else:
            requests.append(ClipRequest.from_dict({**base, "prompt": s}, where=where))
    return requests


# -- helpers ------------------------------------------------------------------------------------------------


def _lora_pair(x: str | tuple[str, float] | Path) -> tuple[str, float]:
    if isinstance(x, (tuple, list)):
        path, scale = x
        return str(path), float(scale)
    return adapter_io.parse_lora_arg(str(x))


def _lineage_mismatch(adapter: adapter_io.Adapter, model: str, revision: str | None) -> list[str]:
    """Warnings when an adapter's recorded base model differs from the one it is sampled on.

    Not an error: a local copy of the same weights has another path, and styles often transfer.
    """
    out = []
    base, base_rev = adapter.lineage.get("reelora.base_model"), adapter.lineage.get("reelora.base_revision")
    if base and base != model:
        out.append(f"adapter {adapter.path} was trained on {base!r}, sampling on {model!r}")
    elif base_rev and revision and base_rev != revision:
        out.append(f"adapter {adapter.path} was trained on {base!r} revision {base_rev!r}, "
                   f"this backbone is revision {revision!r}")
    return out


def _parse_size(size: Any, where: str) -> tuple[int, int]:
    if isinstance(size, str) and re.fullmatch(r"\d+x\d+", size.strip().lower()):
        h, w = size.strip().lower().split("x")
        return int(h), int(w)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"{where}: size must be 'HxW' (e.g. '480x832') or [H, W], got {size!r}")


def _slug_name(index: int, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].rstrip("-")
    return f"{index:03d}-{slug or 'clip'}"


def _unique_names(requests: Sequence[ClipRequest]) -> list[str]:
    names = [r.name or _slug_name(i, r.prompt) for i, r in enumerate(requests)]
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    dup = sorted(n for n, c in seen.items() if c > 1)
    if dup:
        raise ValueError(f"two clips would be written as {dup[0]}.mp4; give them distinct 'name's")
    return names


def _jsonable(value: Any) -> Any:
    """Scheduler configs hold tuples, numpy scalars and the like: make them plain JSON."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


__all__ = ["Sampler", "SampleError", "reproducible_math", "check_out_dir", "ClipRequest", "SampleSettings", "resolve_request", "encode_request", "render", "Clip", "SampleResult", "sample_clips", "read_prompts", "build_requests"]
