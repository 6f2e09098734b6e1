"""The training loop: setup, then `while step < max_steps: step(); maybe_validate(); maybe_checkpoint()`.

Read it top to bottom; the details live in well-named functions in batches.py, step.py, checkpoint.py,
validate.py and logs.py. Runs as one process (`python train.py`) or many (`accelerate launch train.py`).
"""
from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from reelora.data.shards import ShardError, ShardSet
from reelora.train import checkpoint, experts, parallel
from reelora.train.config import Config, ConfigError
from reelora.train.plan import start_summary
from reelora.train.batches import ClipDataset, DataError, StreamBatches, batches
from reelora.train.step import NonFiniteError, StepContext, skipped_steps, train_step

EXIT_SIGTERM = 143
EXIT_SIGINT = 130


def run(cfg: Config) -> int:
    """Train as configured; returns the process exit code (0, 1 on a reported failure, 143 after SIGTERM)."""
    from accelerate import Accelerator

    if cfg.train.deterministic:
        make_deterministic()
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cpu_multiprocess(),
                              kwargs_handlers=experts.ddp_kwargs(cfg))
    lock = None
    try:
        lock = lock_output_dir(cfg, accelerator)
        return _run(cfg, accelerator)
    except (ConfigError, DataError, ShardError, checkpoint.CheckpointError, NonFiniteError) as exc:
        print(f"[rank {accelerator.process_index}] error: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # a write the paths above do not wrap (logs, validation clips): its text names the file
        print(f"[rank {accelerator.process_index}] error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if lock is not None:
            lock.release()
        _teardown(accelerator)


def _run(cfg: Config, accelerator) -> int:
    out = Path(cfg.train.output_dir)
    parallel.check_launch(accelerator)
    cfg = with_family_defaults(cfg)
    resume_from = resolve_resume(cfg)  # config/data problems surface before any model loads
    if accelerator.is_main_process:  # a save cut short (crash, full disk) left a temporary folder behind
        checkpoint.remove_partial(out)
    data = open_training_data(cfg)
    if accelerator.is_main_process:  # the memory plan for this run's clips, before any weight loads (train/plan.py)
        print(start_summary(cfg, accelerator.num_processes, [c.shape for c in data["clips"]], accelerator.device), flush=True)
    val_clips = open_validation_clips(cfg, data)

    spec, comps = load_backbone(cfg, accelerator, cached=data["cache"] is not None)
    model, optimizer, scheduler, params = build_model_and_optimizer(cfg, spec, comps, accelerator)
    model, optimizer = prepare(cfg, accelerator, model, optimizer)
    step, samples_seen = 0, 0
    if resume_from is not None:
        step, samples_seen = restore(resume_from, accelerator.unwrap_model(model), optimizer, scheduler, cfg)
        accelerator.print(f"resumed from {resume_from} at step {step}")

    ctx = StepContext(cfg, accelerator, spec, comps, model, optimizer, scheduler, params,
                      empty_text=data["cache"].load_text("") if data["cache"] is not None else None)
    sampler = StreamBatches([c.shape for c in data["clips"]], cfg.train.batch_size, cfg.train.seed,
                            accelerator.process_index, accelerator.num_processes, start=samples_seen)
    stream = batches(ClipDataset(data["clips"], data["cache"]), sampler, cfg.data.num_workers)
    from reelora.train.logs import MetricLogger
    from reelora.train.validate import Validator

    logger = MetricLogger(cfg, accelerator, start_step=step)
    validator = Validator(cfg, accelerator, spec, comps, val_clips, data["cache"], out)
    stop = GracefulStop()
    samples_per_step = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes

    while step < cfg.train.max_steps:
        micro_batches = [next(stream) for _ in range(cfg.train.grad_accum)]
        metrics = train_step(ctx, micro_batches, step + 1)  # raises NonFiniteError before touching weights
        step += 1
        samples_seen += samples_per_step
        logger.log(step, metrics, samples_per_step)
        if validator.due(step):
            logger.log_validation(step, validator.run(model, step))
        stop_code = stop.agreed(accelerator)
        if stop_code or step == cfg.train.max_steps or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
            save_checkpoint(cfg, accelerator, model, optimizer, scheduler, step, samples_seen)
        if stop_code:
            accelerator.print(f"stopped by signal at step {step}; checkpoint written, resume with train.resume=latest")
            mark_stopped(cfg, accelerator, step, stop_code)
            logger.close()
            return stop_code

    export_adapter(cfg, accelerator, spec, comps, model, data, step)
    if getattr(optimizer, "scaler", None) is not None:
        accelerator.print(f"fp16 loss scaling: {skipped_steps(scheduler, step)} of {step} steps skipped by GradScaler "
                          f"(gradient overflow: no update, the LR schedule did not advance; train/skipped_steps in "
                          f"logs/metrics.jsonl); final loss scale {optimizer.scaler.get_scale():g}")
    mark_stopped(cfg, accelerator, None, 0)
    logger.close()
    return 0


# ---------------------------------------------------------------------------------------------------------
# Setup


def cpu_multiprocess() -> bool:
    """Launched as several processes on a machine without CUDA: accelerate must be told to use DDP over gloo."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_deterministic() -> None:
    """Same inputs, same bits, in any process (train.deterministic)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS initialises
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.mkldnn.enabled = False


def lock_output_dir(cfg: Config, accelerator):
    """One run per train.output_dir: the main process locks it; every rank fails alike if another run holds it."""
    from reelora.lock import lock_on_main

    lock, refused = lock_on_main(cfg.train.output_dir, "training", accelerator)
    if refused:
        raise ConfigError(f"config key 'train.output_dir': {refused}")
    return lock


def resolve_resume(cfg: Config) -> Path | None:
    """The checkpoint to resume from (None: fresh). Refuses to silently overwrite a run with checkpoints."""
    out, resume = Path(cfg.train.output_dir), cfg.train.resume
    if resume is None:
        if checkpoint.list_complete(out):
            raise ConfigError(f"config key 'train.resume': {out} already holds checkpoints; set train.resume=latest "
                              f"to continue that run, or choose another train.output_dir")
        return None
    if resume == "latest":
        path = checkpoint.latest(out)
    else:
        path = Path(resume)
        if not (path / checkpoint.MARKER).is_file():
            raise ConfigError(f"config key 'train.resume': {path} is not a complete checkpoint folder (no {checkpoint.MARKER})")
    if path is not None:
        check_resume_config(path, checkpoint.read_state(path), cfg)
    return path


def open_training_data(cfg: Config) -> dict:
    """Index the shards and check the cache: missing shards, no clips or a foreign cache fail here."""
    if cfg.data.shards is None:
        raise ConfigError("config key 'data.shards': required (a directory built by `reelora shards build`)")
    shard_set = ShardSet(cfg.data.shards, what="data.shards")
    cache = None
    if cfg.data.cache is not None:
        from reelora.train.cache import CacheIds, LatentCache
        from reelora.models.registry import load_model

        # The cache ids depend only on names/revisions: load nothing heavy to compute them.
        _, meta = load_model(cfg.model, components=("tokenizer",))
        cache = LatentCache(cfg.data.cache, CacheIds.of(meta, dtype=_cache_dtype(cfg.data.cache, meta)))
        cache.check(shard_set.clips)
    return {"shards": shard_set, "clips": shard_set.clips, "cache": cache}


def _cache_dtype(root: str, comps) -> str:
    """The dtype the cache was built in for this model (fp32 when several or none are recorded)."""
    import json

    from reelora.train.cache import CacheIds

    found = []
    for p in sorted((Path(root) / "models").glob("*.json")):
        m = json.loads(p.read_text())
        if m.get("vae") == CacheIds.of(comps).vae:
            found.append(m.get("dtype", "fp32"))
    return found[0] if len(found) == 1 else "fp32"


def open_validation_clips(cfg: Config, data: dict) -> list:
    if not cfg.validation.every:
        return []
    if cfg.validation.shards is not None:
        clips = ShardSet(cfg.validation.shards, what="validation.shards").clips
        if data["cache"] is not None:
            data["cache"].check(clips, what="validation.shards (cache)")
    else:
        clips = data["clips"]
    return clips[: cfg.validation.num_clips]


def with_family_defaults(cfg: Config, spec=None) -> Config:
    """Fill the options whose null means "the model family's" (train.flow_shift) from the family spec (`spec`,
    else the one `cfg.model` resolves to)."""
    if cfg.train.flow_shift is not None:
        return cfg
    import dataclasses

    from reelora.models.registry import resolve

    spec = spec if spec is not None else resolve(cfg.model)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, flow_shift=spec.flow_shift))


def load_backbone(cfg: Config, accelerator, cached: bool):
    """Load the frozen base on the device; with a cache the VAE and text encoder stay out of GPU memory."""
    from reelora.models.registry import load_model

    weight_dtype = base_dtype(cfg)
    components = ("transformer", "scheduler") if cached else ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    if not parallel.sharded(cfg, accelerator) and not cfg.train.offload_blocks:
        return load_model(cfg.model, dtype=weight_dtype, device=accelerator.device, components=components)
    # FSDP: the transformer stays in CPU memory (where loading puts it anyway); fully_shard moves it to the
    # device one block at a time and keeps this process's shard of each, so no GPU holds the whole base.
    # train.offload_blocks: the blocks stay in CPU memory; memory.apply moves the rest to the device.
    spec, comps = load_model(cfg.model, dtype=weight_dtype, device="cpu", components=components)
    for m in (comps.vae, comps.text_encoder):
        if m is not None:
            m.to(accelerator.device)
    return spec, comps


def base_dtype(cfg: Config) -> torch.dtype:
    """The dtype the frozen base is loaded and computed in: accelerate's "no" mixed precision means fp32."""
    from reelora.dtypes import parse_dtype

    mp = cfg.train.mixed_precision
    return parse_dtype("fp32" if mp == "no" else mp, "train.mixed_precision")


def build_model_and_optimizer(cfg: Config, spec, comps, accelerator):
    """Attach LoRA, apply checkpointing/FSDP and the memory options, and build the optimizer and LR schedule.

    Returns:
        (transformer, optimizer, scheduler, trainable params).
    """
    from reelora.models.lora import attach_lora
    from reelora.train import memory

    if cfg.train.offload_blocks and accelerator.num_processes > 1:
        raise ConfigError(f"config key 'train.offload_blocks': runs in one process only (DDP broadcasts and "
                          f"reduces from the device, where offloaded weights are not); launched with "
                          f"{accelerator.num_processes} processes")
    # The transformer, or (Wan2.2-A14B) both experts in one module with a LoRA on each trained one.
    transformer = experts.training_module(spec, comps, cfg)
    targets = cfg.lora.target_modules if cfg.lora.target_modules is not None else list(spec.lora_targets)
    try:
        for module in experts.adapted_modules(transformer):
            attach_lora(module, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=targets,
                        dropout=cfg.lora.dropout, init=cfg.lora.init, seed=cfg.train.seed,
                        use_rslora=cfg.lora.use_rslora, use_dora=cfg.lora.use_dora)
    except ValueError as exc:
        raise ConfigError(f"config key 'lora.target_modules': {exc}") from exc
    # Before the optimizer is built: under FSDP it must hold the sharded parameters.
    mesh = parallel.data_parallel_mesh(accelerator) if parallel.sharded(cfg, accelerator) else None
    parallel.parallelize(transformer, spec, cfg, mesh)
    if mesh is None:  # the memory options are refused with train.parallel=fsdp (config.py)
        memory.apply(transformer, spec, cfg, accelerator.device, compute_dtype=base_dtype(cfg))
    transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    return transformer, optimizer, scheduler, params


def prepare(cfg: Config, accelerator, model, optimizer):
    """accelerate's `prepare` as training needs it: an FSDP model is already distributed (DDP would wrap it a
    second time), and offloaded blocks stay in CPU memory (accelerate must not move the whole model)."""
    if parallel.is_sharded(model):
        return model, accelerator.prepare(optimizer)
    placement = [False, None] if cfg.train.offload_blocks else None
    return accelerator.prepare(model, optimizer, device_placement=placement)


def make_optimizer(cfg: Config, params):
    o = cfg.optim
    kwargs = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ConfigError("config key 'optim.name': adamw8bit needs bitsandbytes (pip install 'reelora[8bit]')") from exc
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def lr_factor(cfg: Config, step: int) -> float:
    """LR multiplier after `step` optimizer steps: linear warmup, then constant/linear/cosine decay."""
    o, total = cfg.optim, cfg.train.max_steps
    if step < o.warmup_steps:
        return (step + 1) / (o.warmup_steps + 1)
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    decay = 1.0 - progress if o.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * decay


def restore(path: Path, transformer, optimizer, scheduler, cfg: Config) -> tuple[int, int]:
    from reelora.models.lora import load_lora_state_dict

    lora, state = checkpoint.load(path, parallel.loadable_optimizer(transformer, optimizer))
    try:
        load_lora_state_dict(transformer, lora)
    except ValueError as exc:
        raise checkpoint.CheckpointError(f"{path}: {exc} (was lora.rank or lora.target_modules changed?)") from exc
    scheduler.load_state_dict(state["scheduler"])
    step = int(state["step"])
    scaler = getattr(optimizer, "scaler", None)  # fp16: the loss scale goes on where it was, or the first
    if scaler is not None and state.get("grad_scaler"):  # resumed steps would overflow and skip again
        scaler.load_state_dict(state["grad_scaler"])
    # The param groups hold the LR the saved run's schedule set for its next step. Recompute it from this
    # run's schedule (what LambdaLR would have set), so extending train.max_steps under a decaying
    # schedule uses the new schedule from the first resumed step on. The schedule's position is the
    # scheduler's count of applied updates: `step` less the fp16 steps GradScaler skipped (train/step.py).
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * lr_factor(cfg, scheduler.last_epoch)
    return step, int(state["samples_seen"])


# Keys that may change on resume without changing what is trained: how long, where, how it is logged,
# validated and checkpointed, how many loader workers, how processes share the model (same checkpoint files),
# where the frozen base waits and whether its blocks are compiled (same maths). train.base_storage is in neither
# list: fp8 rounds the base, so a change is allowed with the warning, like train.mixed_precision.
RESUME_FREE = ("train.resume", "train.max_steps", "train.output_dir", "train.checkpoint_every", "train.keep_last",
               "train.parallel", "train.fsdp_reshard_after_forward", "train.offload_blocks", "train.compile_blocks",
               "data.num_workers", "log.", "validation.")
# Keys whose change makes the resumed run a different model: refused.
RESUME_FIXED = ("model", "lora.rank", "lora.alpha", "lora.target_modules", "lora.use_rslora", "lora.use_dora",
                "lora.experts")


def resume_config(cfg: Config) -> dict[str, Any]:
    """The flattened config keys a checkpoint records for resume checks (RESUME_FREE left out)."""
    flat = _flatten(cfg.to_dict())
    return {k: v for k, v in flat.items() if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_FREE)}


def check_resume_config(path: Path, state: dict, cfg: Config) -> None:
    """Name the keys that differ from the checkpoint's run; refuse those that change the model being trained.

    Raises:
        ConfigError: a key of RESUME_FIXED (model, lora.rank, lora.alpha, lora.target_modules...) differs.
    """
    saved = state.get("config")
    if saved is None:  # written before checkpoints recorded their config: nothing to compare key by key
        return
    mine = resume_config(cfg)
    # A key the checkpoint does not record is an option added since it was written: that run had its default.
    saved = {**{k: v for k, v in resume_config(Config()).items() if k not in saved}, **saved}
    changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    fixed = [k for k in changed if k in RESUME_FIXED]
    if fixed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {mine.get(k)!r} now" for k in fixed)
        raise ConfigError(f"config key {fixed[0]!r}: cannot resume {path} with a different {', '.join(fixed)} ({detail}); "
                          f"start a new train.output_dir instead")
    if changed and os.environ.get("RANK", "0") == "0":
        detail = ", ".join(f"{k} ({saved.get(k)!r} -> {mine.get(k)!r})" for k in changed)
        print(f"warning: resuming {path} with changed settings: {detail}", file=sys.stderr, flush=True)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------------------
# Checkpoints, signals, export


def save_checkpoint(cfg, accelerator, model, optimizer, scheduler, step: int, samples_seen: int) -> None:
    model = accelerator.unwrap_model(model)
    # Every rank joins the gather (FSDP); the main process gets the full LoRA and optimizer state and writes.
    lora, optimizer_state = parallel.full_lora_state_dict(model), parallel.full_optimizer_state_dict(model, optimizer)
    message = None
    if accelerator.is_main_process:
        state = {"samples_seen": samples_seen, "scheduler": scheduler.state_dict(),
                 "world_size": accelerator.num_processes, "config": resume_config(cfg)}
        if getattr(optimizer, "scaler", None) is not None:  # fp16: GradScaler's scale and growth tracker
            state["grad_scaler"] = optimizer.scaler.state_dict()
        try:
            checkpoint.save(cfg.train.output_dir, step, lora, optimizer_state, state, cfg.train.keep_last)
        except checkpoint.CheckpointError as exc:  # full disk etc.: the save cleaned up after itself
            message = str(exc)
    fail_on_every_rank(accelerator, message)


def fail_on_every_rank(accelerator, message: str | None) -> None:
    """Raise the main process's write failure on every rank, so none waits forever at the next collective.

    The broadcast also stands in for the barrier: no rank goes on before the main process has written.
    """
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message])[0]
    if message:
        raise checkpoint.CheckpointError(message)


STOPPED_FILE = "stopped.json"


def mark_stopped(cfg: Config, accelerator, step: int | None, code: int) -> None:
    """OUTPUT/stopped.json while a run is stopped by a signal (removed when it finishes): under `accelerate
    launch` the launcher exits 1 whatever its workers did, so a scheduler tells a stop from a crash by this."""
    if not accelerator.is_main_process:
        return
    path = Path(cfg.train.output_dir) / STOPPED_FILE
    if step is None:
        path.unlink(missing_ok=True)
    else:
        from reelora.files import write_json_atomic

        write_json_atomic(path, {"step": step, "exit_code": code, "resume": "train.resume=latest"})


class GracefulStop:
    """SIGTERM/SIGINT set a flag; the loop finishes the step, checkpoints and exits (143 / 130)."""

    def __init__(self):
        self.signum = 0
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    def agreed(self, accelerator) -> int:
        """Exit code if any rank got a signal (all ranks agree, so none hangs in a collective), else 0."""
        mine = {signal.SIGTERM: 1.0, signal.SIGINT: 1000.0}.get(self.signum, 0.0)
        total = mine
        if accelerator.num_processes > 1:
            total = accelerator.reduce(torch.tensor([mine], device=accelerator.device), reduction="sum").item()
        if not total:
            return 0
        return EXIT_SIGTERM if int(total) % 1000 else EXIT_SIGINT


def export_adapter(cfg: Config, accelerator, spec, comps, model, data: dict, step: int) -> None:
    """OUTPUT/adapter/: diffusers + ComfyUI safetensors with lineage, and a model card (main process)."""
    from safetensors import SafetensorError

    from reelora import __version__
    from reelora.models.lineage import shares_of
    from reelora.models.lora import save_adapter

    model = accelerator.unwrap_model(model)
    sd = parallel.full_lora_state_dict(model)  # every rank joins the gather under FSDP
    message = None
    if not parallel.is_sharded(model):  # FSDP keeps one sharded copy: there are no replicas to compare
        message = check_replicas(cfg, accelerator, sd)
    if accelerator.is_main_process and message is None:
        shards = data["shards"]
        lineage = {
            "base_model": cfg.model, "base_revision": comps.revision, "family": spec.family,
            "shards": shards.directory, "shards_index_sha256": shards.index_sha256, "titles": shards.titles,
            "rights": shards.rights, "trigger": shards.trigger,  # the model card's licence and trigger word
            "num_clips": len(shards.clips), "step": step, "config": cfg.to_dict(), "reelora_version": __version__,
            "shares": shares_of(c.meta for c in shards.clips),  # who gets paid: `reelora lineage ADAPTER`
        }
        targets = cfg.lora.target_modules if cfg.lora.target_modules is not None else list(spec.lora_targets)
        folder = Path(cfg.train.output_dir) / "adapter"
        try:  # each file is written atomically: a failure leaves the old file or none, never a torn one
            save_adapter(folder, sd, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=targets,
                         family=spec.family, lineage=lineage, use_rslora=cfg.lora.use_rslora, use_dora=cfg.lora.use_dora)
        except (OSError, SafetensorError) as exc:
            message = checkpoint.write_error(folder, exc, "the adapter to") + f" (the last checkpoint of step {step} is complete)"
    fail_on_every_rank(accelerator, message)


def check_replicas(cfg: Config, accelerator, sd: dict) -> str | None:
    """Every rank must hold the same adapter at the end; record the digests in OUTPUT/logs/replicas.json.

    Returns the main process's write failure (None when written), for `fail_on_every_rank`.
    """
    import hashlib

    from accelerate.utils import gather_object

    digest = hashlib.sha256(b"".join(sd[k].detach().cpu().float().numpy().tobytes() for k in sorted(sd))).hexdigest()
    digests = gather_object([digest]) if accelerator.num_processes > 1 else [digest]
    message = None
    if accelerator.is_main_process:
        from reelora.files import write_json_atomic

        path = Path(cfg.train.output_dir) / "logs" / "replicas.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"digests": digests})
        except OSError as exc:
            message = checkpoint.write_error(path, exc, "replica digests to")
    if len(set(digests)) != 1:
        raise checkpoint.CheckpointError(f"ranks ended with different LoRA weights: {digests}")
    return message


def _teardown(accelerator) -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if accelerator.num_processes > 1:
        parallel.end_process_group()
    # Forget accelerate's process-wide singletons so another run() in this process starts clean (tests).
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
