"""Memory plan: what a training run holds per GPU, from its config alone, before any weight loads.

`reelora plan --config CFG` and the first lines of a training run print it. Every figure comes from shapes:

* **Parameters** are counted exactly: the family's published transformer config (models/wan.py) is built on
  the meta device and the config's LoRA (lora.rank, lora.target_modules) attached with peft, as training does.
* **Frozen base weights**: base params x the storage dtype (train.mixed_precision: bf16/fp16 2 bytes, no 4).
* **LoRA**: fp32 weights + fp32 gradients + optimizer state (adamw: 2 fp32 moments, 8 bytes; adamw8bit: 2).
  DDP with several processes adds its fp32 gradient buckets (a second copy of the gradients).
* **Activations**: what autograd saves for backward, per transformer block, from the Wan block structure
  (see `block_activation_bytes`; the constants were read off the tensors `saved_tensors_hooks` sees in a
  real forward of WanSpec.forward, and tests/train/test_plan.py checks the sum against a measurement).
  Without checkpointing every block's tensors stay until backward; with it only each block's input does,
  and backward recomputes one block at a time. Backward also holds gradients of one block's activations
  while it runs (a few tokens x ffn and one fp32 tokens x dim, read off CPU allocator peaks with
  `measure_peak_bytes`; not yet compared on a GPU).
* **Parallel mode**: ddp keeps the whole base on every GPU; fsdp (more than one GPU) keeps 1/N of the base
  and of the LoRA state plus two gathered blocks (FSDP2 gathers the next block while one computes).
* **Fixed**: CUDA context, cuBLAS/NCCL workspaces and allocator slack, CUDA_OVERHEAD_GIB (an assumption).

Figures are GiB (2**30 bytes), as torch.cuda.max_memory_allocated reports them / 2**30.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

GIB = 2**30
CUDA_OVERHEAD_GIB = 1.0
"""CUDA context (~0.5 GiB with torch 2.x lazy module loading) + cuBLAS/NCCL workspaces and allocator
fragmentation (~0.5 GiB): a stated allowance, to be replaced by a GPU measurement."""
CARDS_GIB = (24, 48, 80)
"""Cards the verdict is given for when no --gpu-gb is passed."""


# The layer types diffusers' layerwise casting stores in fp8 (its private _GO_LC_SUPPORTED_PYTORCH_LAYERS).
CASTABLE_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
                   torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


class PlanError(ValueError):
    """The plan cannot be made for this config (unknown architecture, unsupported family): the message says why."""


# ---------------------------------------------------------------------------------------------------------
# What the model is: its transformer config, VAE compression and text length, without loading weights


@dataclass
class Architecture:
    model: str
    transformer: dict
    """WanTransformer3DModel config (num_layers, num_attention_heads, attention_head_dim, ffn_dim, patch_size, ...)."""
    vae_temporal: int
    vae_spatial: int
    latent_channels: int
    text_len: int
    """Text tokens per prompt the cross-attention sees (Wan: 512 UMT5 tokens, padded)."""
    default_shape: tuple[int, int, int]
    """(frames, height, width) planned when neither --frames/--height/--width nor data.shards gives one."""
    experts: int = 1
    """Transformers of this shape the backbone holds (Wan2.2-A14B: 2, a high- and a low-noise expert)."""

    @property
    def dim(self) -> int:
        return self.transformer["num_attention_heads"] * self.transformer["attention_head_dim"]


def architecture(model: str) -> Architecture:
    """The shapes of `model` (a tiny name, a published Wan hub id, a local diffusers directory or a cached hub id).

    Every Wan family is planned (Wan2.1, Wan2.2-TI2V-5B, Wan2.2-A14B: its two experts counted as such).

    Raises:
        PlanError: a family other than Wan, or no transformer/config.json to be read offline.
    """
    from reelora.models.registry import FAMILIES, TINY_PREFIX, is_tiny, spec_for_index

    wan_like = {f: s for f, s in FAMILIES.items() if s.pipeline_class_name == "WanPipeline"}
    only = f"the memory plan models the Wan block structure only ({', '.join(TINY_PREFIX + f for f in wan_like)}, " \
           f"{', '.join(i for s in wan_like.values() for i in s.published_transformers)})"

    def arch(spec, transformer, vae, text_len, tiny=False):
        d = spec.tiny_sample_defaults if tiny else spec.sample_defaults
        return Architecture(model, dict(transformer), vae.get("scale_factor_temporal", 4), vae.get("scale_factor_spatial", 8),
                            vae.get("z_dim", 16), text_len, (d.num_frames, d.height, d.width),
                            len(getattr(spec, "experts", None) or ()) or 1)

    for family, spec in FAMILIES.items():
        if model in getattr(spec, "published_transformers", {}):
            if family not in wan_like:  # known offline, but not a Wan block structure (LTX-2)
                raise PlanError(f"model {model!r} ({family}): {only}")
            return arch(spec, spec.published_transformers[model], spec.published_vae, spec.max_text_len)
    if is_tiny(model):
        spec = wan_like.get(model[len(TINY_PREFIX):])
        if spec is None:
            raise PlanError(f"model {model!r}: {only}")
        from diffusers import AutoencoderKLWan, WanTransformer3DModel

        from reelora.models.wan import TINY_MAX_TEXT_LEN

        # Tiny shapes come from the classes' own defaults overridden by the family's, as tiny() builds them.
        transformer = _with_defaults(WanTransformer3DModel, spec.tiny_transformer)
        vae = _with_defaults(AutoencoderKLWan, spec.tiny_vae)
        return arch(spec, transformer, vae, TINY_MAX_TEXT_LEN, tiny=True)
    transformer, vae, index = _read_configs(model)
    try:
        spec = spec_for_index(index, model)
    except ValueError:
        spec = None
    if spec not in wan_like.values():
        raise PlanError(f"model {model!r}: model_index.json names {index.get('_class_name')!r}; {only}")
    return arch(spec, transformer, vae, spec.max_text_len)


def _with_defaults(cls, overrides: dict) -> dict:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {**{k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}, **overrides}


def _read_configs(model: str) -> tuple[dict, dict, dict]:
    """transformer/config.json, vae/config.json and model_index.json of a local directory or an already cached hub id."""
    def read(name: str) -> dict:
        path = Path(model) / name
        if not path.is_file():
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(model, name)
            except Exception:  # not a valid repo id either
                cached = None
            if not isinstance(cached, str):
                raise PlanError(f"model {model!r}: no {name} to read (not a local diffusers directory, not in the hub "
                                f"cache, and not one of the published Wan ids the plan knows offline)")
            path = Path(cached)
        return json.loads(path.read_text())

    return read("transformer/config.json"), read("vae/config.json"), read("model_index.json")


# ---------------------------------------------------------------------------------------------------------
# Parameter counts (exact, on the meta device)


@dataclass
class Counts:
    base: int
    """Frozen transformer parameters."""
    base_block: int
    """Frozen parameters of one transformer block (the FSDP gather unit)."""
    blocks: int
    lora: int
    lora_layers: int
    fp8_able: int
    """Base parameters diffusers' layerwise casting would store in fp8 (Linear/Conv weights outside the skipped
    patch embedding, condition embedder and norms)."""


def count_parameters(arch: Architecture, rank: int, target_modules) -> Counts:
    """Build the transformer on the meta device, attach the LoRA as training does, count."""
    from diffusers import WanTransformer3DModel
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    from reelora.models.lora import attach_lora
    from reelora.models.wan import WanSpec

    targets = list(WanSpec.lora_targets) if target_modules is None else target_modules
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        transformer = WanTransformer3DModel(**{k: v for k, v in arch.transformer.items() if not k.startswith("_")})
        try:
            attach_lora(transformer, rank=rank, alpha=float(rank), target_modules=targets, seed=None)
        except ValueError as exc:
            raise PlanError(f"config key 'lora.target_modules': {exc}") from exc
    base = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n)
    lora = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    block = transformer.blocks[0]
    base_block = sum(p.numel() for n, p in block.named_parameters() if "lora_" not in n)
    layers = sum(1 for n, _ in transformer.named_modules() if n.endswith(".lora_A.default"))
    import re

    skip = tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(getattr(transformer, "_skip_layerwise_casting_patterns", None) or ())
    fp8_able = sum(p.numel() for name, m in transformer.named_modules()
                   if isinstance(m, CASTABLE_LAYERS) and "lora_" not in name and not any(re.search(s, name) for s in skip)
                   for p in m.parameters(recurse=False))
    return Counts(base, base_block, len(transformer.blocks), lora, layers, fp8_able)


# ---------------------------------------------------------------------------------------------------------
# Activations


def latent_shape(arch: Architecture, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(channels, latent frames, latent height, latent width) the VAE makes of a clip: Wan (F - 1) / 4 + 1, H / 8, W / 8."""
    return (arch.latent_channels, (frames - 1) // arch.vae_temporal + 1, height // arch.vae_spatial, width // arch.vae_spatial)


def tokens(arch: Architecture, latent: tuple[int, int, int, int]) -> int:
    """Transformer sequence length: latent frames x height x width over the patch size (Wan: 1, 2, 2)."""
    pt, ph, pw = arch.transformer["patch_size"]
    return (latent[1] // pt) * (latent[2] // ph) * (latent[3] // pw)


def block_activation_bytes(s: int, text_len: int, dim: int, ffn: int, heads: int, rank: int, lora_block: int, half: bool) -> int:
    """Bytes one Wan block saves for backward for one sample of `s` tokens (diffusers WanTransformerBlock + peft LoRA).

    Read off the saved tensors of a real forward (saved_tensors_hooks, storages counted once, parameters left out):
      half (bf16/fp16 autocast; norms and gated residuals run in fp32 in the block):
        s x dim: 6 fp32 (the .float() copies around norm1/norm2/norm3 and the gated residuals)
                 + 13 half (inputs of the 8 LoRA'd projections' shared inputs, q/k/v/out of both attentions' SDPA)
        s x ffn: 2 half (FFN hidden before and after GELU)
        s x rank: 8 half (lora_A outputs of the 6 token-side projections and the 2 FFN layers)
        text x dim: 4 half (cross-attention k/v projections and their head views); text x rank: 2 half
        the LoRA weights' half copies autocast makes (lora_block params x 2 bytes)
      fp32 (train.mixed_precision no): the .float()/.type_as copies vanish:
        s x dim 15, s x ffn 2, s x rank 8, text x dim 3, text x rank 2, all fp32
      both: norm statistics (9 per token, fp32) and SDPA's log-sum-exp (2 x heads per token, fp32). SDPA (flash or
      memory-efficient on GPU, flash on CPU) never stores the s x s attention matrix.
    """
    stats = s * (9 + 2 * heads) * 4
    if half:
        return (s * dim * (6 * 4 + 13 * 2) + s * ffn * 2 * 2 + s * rank * 8 * 2 + text_len * dim * 4 * 2
                + text_len * rank * 2 * 2 + lora_block * 2 + stats)
    return s * dim * 15 * 4 + s * ffn * 2 * 4 + s * rank * 8 * 4 + text_len * dim * 3 * 4 + text_len * rank * 2 * 4 + stats


def head_activation_bytes(s: int, text_len: int, dim: int, latent_elems: int, half: bool) -> int:
    """Outside the blocks: the fp32 input of norm_out, the loss's fp32 difference, the text embedder's output
    (half under autocast) that every block's cross-attention reads."""
    return s * dim * 4 + latent_elems * 4 + text_len * dim * (2 if half else 4)


def activation_bytes(arch: Architecture, counts: Counts, s: int, latent_elems: int, rank: int, half: bool,
                     checkpointing: bool) -> dict[str, int]:
    """Per sample: `stored` (saved through the whole forward), `backward` (held while one block runs backward)."""
    t = arch.transformer
    lora_block = counts.lora // counts.blocks
    block = block_activation_bytes(s, arch.text_len, arch.dim, t["ffn_dim"], t["num_attention_heads"], rank, lora_block, half)
    head = head_activation_bytes(s, arch.text_len, arch.dim, latent_elems, half)
    # While a block runs backward, gradients of its activations live besides what it saved. The allocator peaks
    # (`measure_peak_bytes`, BENCHMARKS.md "Memory plan vs measured") come in the FFN's backward: about one
    # tokens x ffn gradient in the compute dtype plus the residual stream's fp32 one; under half autocast
    # without checkpointing about four tokens x ffn (measured on CPU: 4-6 half tokens x ffn).
    ffn_grads = 4 if half and not checkpointing else 1
    grads = s * (ffn_grads * t["ffn_dim"] * (2 if half else 4) + arch.dim * 4)
    if checkpointing:
        # Each block keeps only its input hidden states; backward recomputes one block's saved tensors at a time.
        return {"stored": counts.blocks * s * arch.dim * (2 if half else 4) + head, "backward": block + grads}
    return {"stored": counts.blocks * block + head, "backward": grads}


def measure_saved_bytes(run, module: torch.nn.Module) -> int:
    """Bytes autograd saves for backward while `run()` executes: each storage once, `module`'s parameters left out
    (weights are counted as weights; a weight saved as a transposed view shares the parameter's storage).

    What `block_activation_bytes` is checked against (tests/train/test_plan.py, BENCHMARKS.md).
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(seen.values())


def measure_peak_bytes(step) -> int:
    """Peak bytes the CPU allocator holds during `step()` above what it held before (torch.profiler's per-op
    allocations and frees, in order). Run a warm-up step first so optimizer/gradient buffers already exist.

    What `activation_bytes`' stored + backward is checked against on CPU (tests/train/test_plan.py).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    current = peak = 0
    for event in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage  # self: an op's own allocations, not its children's again
        peak = max(peak, current)
    return peak


# ---------------------------------------------------------------------------------------------------------
# The plan


def memory_options(cfg) -> dict:
    """Memory options of the config that change the plan: the one place they are read.

    `storage_bytes`: bytes per frozen Linear/Conv weight when the base is stored narrower than it computes (fp8
    layerwise casting, `train.base_storage=fp8`: 1); None keeps train.mixed_precision's dtype. `offload`: blocks
    whose frozen weights are on the GPU at a time, the rest in CPU memory (`train.offload_blocks`; 0: no offload).
    """
    t = cfg.train
    return {"storage_bytes": 1 if t.base_storage == "fp8" else None, "offload": t.offload_blocks}


@dataclass
class Plan:
    model: str
    gpus: int
    parallel: str
    """What the run does: ddp (a full copy per GPU; also a single process) or fsdp (sharded over the GPUs)."""
    mixed_precision: str
    optimizer: str
    batch_size: int
    shape: tuple[int, int, int]
    latent: tuple[int, int, int, int]
    tokens: int
    text_tokens: int
    checkpointing: bool
    params: int
    lora_params: int
    lora_layers: int
    rows: dict[str, float]
    """GiB per GPU by item, without activations."""
    activations: dict[str, dict[str, float]]
    """GiB per GPU: {"checkpointing": {"stored", "backward"}, "no_checkpointing": {...}}."""
    total_gib: dict[str, float]
    """GiB per GPU with and without checkpointing (keys as in `activations`)."""
    notes: list[str]

    @property
    def configured(self) -> str:
        return "checkpointing" if self.checkpointing else "no_checkpointing"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "configured": self.configured}


def estimate(cfg, *, gpus: int = 1, shape: tuple[int, int, int] | None = None, counts: Counts | None = None,
             arch: Architecture | None = None) -> Plan:
    """Per-GPU memory of training `cfg` on `gpus` processes at clips of `shape` = (frames, height, width).

    Raises:
        PlanError: the model's shapes cannot be known offline, or bad LoRA targets / clip shape.
    """
    arch = arch or architecture(cfg.model)
    if gpus < 1:
        raise PlanError(f"--gpus must be >= 1, got {gpus}")
    shape = tuple(shape or arch.default_shape)
    frames, height, width = shape
    if frames < 1 or height < arch.vae_spatial or width < arch.vae_spatial:
        raise PlanError(f"clip shape {frames}x{height}x{width}: too small for the VAE's {arch.vae_spatial}x spatial compression")
    counts = counts or count_parameters(arch, cfg.lora.rank, cfg.lora.target_modules)
    notes: list[str] = []
    expert_counts = counts  # what one forward runs through: the activations are one expert's
    if arch.experts > 1:  # both experts stay loaded (each step runs one); a LoRA on each trained one
        trained = arch.experts if cfg.lora.experts == "both" else 1
        counts = dataclasses.replace(counts, base=counts.base * arch.experts, blocks=counts.blocks * arch.experts,
                                     fp8_able=counts.fp8_able * arch.experts, lora=counts.lora * trained,
                                     lora_layers=counts.lora_layers * trained)
        notes.append(f"{arch.experts} experts of {counts.base // arch.experts:,} params each are held (a step runs one "
                     f"of them: activations are one expert's); lora.experts={cfg.lora.experts} trains a LoRA on "
                     f"{trained} of them")
    latent = latent_shape(arch, frames, height, width)
    s = tokens(arch, latent)
    half = cfg.train.mixed_precision in ("bf16", "fp16")
    opts = memory_options(cfg)
    fsdp = cfg.train.parallel == "fsdp" and gpus > 1
    shard = gpus if fsdp else 1
    compute_bytes = 2 if half else 4

    # Frozen base: storage dtype per parameter, then what one GPU holds of it.
    base_bytes = counts.base * compute_bytes
    block_bytes = counts.base_block * compute_bytes
    if opts["storage_bytes"] is not None:
        base_bytes -= counts.fp8_able * (compute_bytes - opts["storage_bytes"])
        block_bytes = block_bytes * base_bytes / (counts.base * compute_bytes)
    rows: dict[str, float] = {}
    if opts["offload"]:
        # The blocks' frozen weights live in CPU memory; one group of `offload` blocks is on the GPU at a time.
        n = opts["offload"]
        rows[f"frozen base weights (offloaded: {n} block(s) on GPU)"] = (base_bytes - counts.blocks * block_bytes + n * block_bytes) / GIB
    else:
        rows["frozen base weights"] = base_bytes / shard / GIB
    if fsdp:
        rows["gathered blocks (FSDP, 2 in flight)"] = 2 * (block_bytes + counts.lora // counts.blocks * 4) / GIB
    state_bytes = 2 if cfg.optim.name == "adamw8bit" else 8
    rows["LoRA weights (fp32)"] = counts.lora * 4 / shard / GIB
    rows["LoRA gradients (fp32)"] = counts.lora * 4 / shard / GIB
    rows[f"optimizer state ({cfg.optim.name})"] = counts.lora * state_bytes / shard / GIB
    if gpus > 1 and not fsdp:
        rows["DDP gradient buckets (fp32)"] = counts.lora * 4 / GIB
    rows["CUDA context + workspaces (fixed)"] = CUDA_OVERHEAD_GIB

    latent_elems = math.prod(latent)
    b = cfg.train.batch_size
    acts, totals = {}, {}
    for key, ckpt in (("checkpointing", True), ("no_checkpointing", False)):
        a = activation_bytes(arch, expert_counts, s, latent_elems, cfg.lora.rank, half, ckpt)
        acts[key] = {k: v * b / GIB for k, v in a.items()}
        totals[key] = sum(rows.values()) + sum(acts[key].values())
    if cfg.data.cache is None:
        notes.append("data.cache is null: the VAE and the text encoder (UMT5-XXL for Wan: ~11 GiB in bf16) also sit "
                     "on the GPU and are not counted here; build a cache with `reelora cache`")
    if cfg.lora.dropout > 0:
        notes.append(f"lora.dropout={cfg.lora.dropout:g} keeps a dropped-out copy of each adapted layer's input "
                     f"({counts.lora_layers} layers), not counted here")
    if cfg.train.parallel == "fsdp" and gpus == 1:
        notes.append("train.parallel=fsdp with one GPU runs unsharded (as ddp)")
    return Plan(cfg.model, gpus, "fsdp" if fsdp else "ddp", cfg.train.mixed_precision, cfg.optim.name, b, shape,
                latent, s, arch.text_len, cfg.train.gradient_checkpointing, counts.base, counts.lora, counts.lora_layers,
                rows, acts, totals, notes)


def verdicts(plan: Plan, gpu_gib: float | None) -> list[tuple[float, bool]]:
    """(card GiB, fits) for the configured checkpointing setting: the given card, or CARDS_GIB."""
    total = plan.total_gib[plan.configured]
    return [(g, total <= g) for g in ((gpu_gib,) if gpu_gib else CARDS_GIB)]


def format_plan(plan: Plan, gpu_gib: float | None = None) -> str:
    """The plan as a table, one GiB figure per item per GPU, and the verdict(s)."""
    f, h, w = plan.shape
    c, lf, lh, lw = plan.latent
    on = "on" if plan.checkpointing else "off"
    lines = [
        f"memory plan for {plan.model}: {plan.gpus} GPU(s), {plan.parallel}, mixed_precision {plan.mixed_precision}, "
        f"gradient checkpointing {on}",
        f"  {plan.params:,} base params, {plan.lora_params:,} LoRA params in {plan.lora_layers} layers; "
        f"batch {plan.batch_size} x {f}x{h}x{w} frames -> latents {c}x{lf}x{lh}x{lw} = {plan.tokens:,} tokens "
        f"(+{plan.text_tokens} text tokens)",
        "",
        f"  {'per GPU (GiB)':<52}{'ckpt on':>10}{'ckpt off':>10}",
    ]
    for name, gib in plan.rows.items():
        lines.append(f"  {name:<52}{gib:>10.2f}{gib:>10.2f}")
    on_a, off_a = plan.activations["checkpointing"], plan.activations["no_checkpointing"]
    lines.append(f"  {'activations kept through the forward':<52}{on_a['stored']:>10.2f}{off_a['stored']:>10.2f}")
    lines.append(f"  {'activations of the block in backward':<52}{on_a['backward']:>10.2f}{off_a['backward']:>10.2f}")
    lines.append(f"  {'total':<52}{plan.total_gib['checkpointing']:>10.2f}{plan.total_gib['no_checkpointing']:>10.2f}")
    lines.append("")
    total = plan.total_gib[plan.configured]
    for g, fits in verdicts(plan, gpu_gib):
        lines.append(f"verdict: {'fits' if fits else 'does not fit'} on {g:g} GB per GPU "
                     f"(ckpt {on}: {total:.1f} GiB{'' if fits else f', {total - g:.1f} over'})")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def clip_shape(shapes) -> tuple[int, int, int] | None:
    """The clip shape with the most pixels among `shapes` ((frames, height, width) or None each): what peaks."""
    known = [tuple(x) for x in shapes if x is not None]
    return max(known, key=math.prod) if known else None


def shards_shape(shards: str | None) -> tuple[int, int, int] | None:
    """The largest clip shape in a shard directory's index, or None (no data.shards, or not readable yet)."""
    if shards is None or not (Path(shards) / "index.json").is_file():
        return None
    from reelora.data.shards import ShardError, ShardSet

    try:
        return clip_shape(c.shape for c in ShardSet(shards, what="data.shards").clips)
    except ShardError:
        return None


def start_summary(cfg, gpus: int, shapes, device: torch.device | None = None) -> str:
    """The plan for a run about to start (its clips' largest shape, its GPU's memory); one line when there is none.

    Never raises: the plan advises, it must not stop a run that would train.
    """
    try:
        gpu_gib = round(torch.cuda.get_device_properties(device).total_memory / GIB, 1) if device is not None and device.type == "cuda" else None
        plan = estimate(cfg, gpus=gpus, shape=clip_shape(shapes))
        return format_plan(plan, gpu_gib) if gpu_gib else format_plan(plan).split("\nverdict:")[0] + "\n(no GPU: no verdict)"
    except PlanError as exc:
        return f"memory plan: not available ({exc})"
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return f"memory plan: failed ({type(exc).__name__}: {exc})"
