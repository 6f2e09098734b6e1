"""Memory plan: what a training run holds per GPU, from its config alone, before any weight loads.

`reelora plan --config CFG` and the first lines of a training run print it. Every figure comes from shapes:

* **Parameters** are counted exactly: the family's published transformer config (models/wan.py; LTX-2:
  LTX2VideoTransformer3DModel's defaults, its audio stream included) is built on the meta device and the
  config's LoRA (lora.rank, lora.target_modules) attached with peft, as training does. LTX-2's frozen text
  connectors (which the training forward runs) are counted too, as their own row.
* **Frozen base weights**: base params x the storage dtype (train.mixed_precision: bf16/fp16 2 bytes, no 4).
* **LoRA**: fp32 weights + fp32 gradients + optimizer state (adamw: 2 fp32 moments, 8 bytes; adamw8bit: 2).
  DDP with several processes adds its fp32 gradient buckets (a second copy of the gradients).
* **Activations**: what autograd saves for backward, per transformer block, from the Wan block structure
  (see `block_activation_bytes`; the constants were read off the tensors `saved_tensors_hooks` sees in a
  real forward of WanSpec.forward, and tests/train/test_plan.py checks the sum against a measurement) or
  LTX-2's video block as LTX2Spec.forward runs it (`ltx2_block_activation_bytes`, read the same way off a
  small-width LTX-2; tests/train/test_plan_ltx2.py).
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
    """The transformer's config: WanTransformer3DModel's (num_layers, num_attention_heads, attention_head_dim, ffn_dim,
    patch_size, ...) or, for family ltx2, LTX2VideoTransformer3DModel's."""
    vae_temporal: int
    vae_spatial: int
    latent_channels: int
    text_len: int
    """Text tokens per prompt the cross-attention sees (Wan: 512 UMT5 tokens, padded)."""
    default_shape: tuple[int, int, int]
    """(frames, height, width) planned when neither --frames/--height/--width nor data.shards gives one."""
    experts: int = 1
    """Transformers of this shape the backbone holds (Wan2.2-A14B: 2, a high- and a low-noise expert)."""
    structure: str = "wan"
    """The block structure: "wan" (every Wan family) or "ltx2"."""
    connectors: dict | None = None
    """structure ltx2: LTX2TextConnectors config (frozen, on the GPU with the transformer: the training forward runs them)."""

    @property
    def dim(self) -> int:
        return self.transformer["num_attention_heads"] * self.transformer["attention_head_dim"]

    @property
    def ffn(self) -> int:
        """FFN width: Wan's ffn_dim; LTX-2's FeedForward is 4 x dim."""
        return 4 * self.dim if self.structure == "ltx2" else self.transformer["ffn_dim"]

    @property
    def patch(self) -> tuple[int, int, int]:
        """(time, height, width) patch of the transformer's patch embedding."""
        t = self.transformer
        return (t["patch_size_t"], t["patch_size"], t["patch_size"]) if self.structure == "ltx2" else tuple(t["patch_size"])


def architecture(model: str) -> Architecture:
    """The shapes of `model` (a tiny name, a published hub id, a local diffusers directory or a cached hub id).

    Every Wan family is planned (Wan2.1, Wan2.2-TI2V-5B, Wan2.2-A14B: its two experts counted as such), and LTX-2
    (family ltx2) as reelora trains it: video only (see `ltx2_block_activation_bytes`).

    Raises:
        PlanError: another family (LTX-Video), or no transformer/config.json to be read offline.
    """
    from reelora.models.registry import FAMILIES, TINY_PREFIX, is_tiny, spec_for_index

    planned = {f: s for f, s in FAMILIES.items() if s.pipeline_class_name in PLANNED}
    only = f"the memory plan models the Wan and LTX-2 block structures only ({', '.join(TINY_PREFIX + f for f in planned)}, " \
           f"{', '.join(i for s in planned.values() for i in s.published_transformers)})"

    def arch(spec, transformer, vae, text_len, tiny=False):
        d = spec.tiny_sample_defaults if tiny else spec.sample_defaults
        if spec.pipeline_class_name == "LTX2Pipeline":
            return _ltx2_arch(model, transformer, vae, text_len, (d.num_frames, d.height, d.width))
        return Architecture(model, dict(transformer), vae.get("scale_factor_temporal", 4), vae.get("scale_factor_spatial", 8),
                            vae.get("z_dim", 16), text_len, (d.num_frames, d.height, d.width),
                            len(getattr(spec, "experts", None) or ()) or 1)

    for family, spec in FAMILIES.items():
        if model in getattr(spec, "published_transformers", {}):
            if family not in planned:
                raise PlanError(f"model {model!r} ({family}): {only}")
            return arch(spec, spec.published_transformers[model], getattr(spec, "published_vae", None), spec.max_text_len)
    if is_tiny(model):
        spec = planned.get(model[len(TINY_PREFIX):])
        if spec is None:
            raise PlanError(f"model {model!r}: {only}")
        if spec.pipeline_class_name == "LTX2Pipeline":
            from reelora.models.ltx2 import TINY_CONNECTORS, TINY_MAX_TEXT_LEN, TINY_TRANSFORMER, TINY_VAE

            d = spec.tiny_sample_defaults
            return _ltx2_arch(model, TINY_TRANSFORMER, TINY_VAE, TINY_MAX_TEXT_LEN, (d.num_frames, d.height, d.width),
                              TINY_CONNECTORS)
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
    if spec not in planned.values():
        raise PlanError(f"model {model!r}: model_index.json names {index.get('_class_name')!r}; {only}")
    if spec.pipeline_class_name == "LTX2Pipeline":
        connectors = Path(model) / "connectors" / "config.json"  # else LTX2TextConnectors' defaults (the release's widths)
        d = spec.sample_defaults
        return _ltx2_arch(model, transformer, vae, spec.max_text_len, (d.num_frames, d.height, d.width),
                          json.loads(connectors.read_text()) if connectors.is_file() else None)
    return arch(spec, transformer, vae, spec.max_text_len)


PLANNED = ("WanPipeline", "LTX2Pipeline")
"""Pipelines whose transformer block structure the plan models."""


def _ltx2_arch(model: str, transformer: dict, vae: dict | None, text_len: int, shape,
               connectors: dict | None = None) -> Architecture:
    """LTX-2: the transformer from LTX2VideoTransformer3DModel's defaults overridden by `transformer` (the defaults
    are the released 19B model's). The VAE's compression: the transformer's own `vae_scale_factors` (it places its
    RoPE coordinates by them, so they are the released VAE's 8x temporal, 32x spatial) unless a VAE config is
    given (tiny, a local directory), whose AutoencoderKLLTX2Video is then built on the meta device and asked, as
    LTX2Pipeline asks it."""
    from diffusers import AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel

    t = _with_defaults(LTX2VideoTransformer3DModel, transformer)
    temporal, spatial, _ = t["vae_scale_factors"]
    channels = t["in_channels"] // (t["patch_size"] ** 2 * t["patch_size_t"])
    if vae is not None:
        with torch.device("meta"):
            v = AutoencoderKLLTX2Video(**{k: x for k, x in vae.items() if not k.startswith("_")})
        temporal, spatial, channels = v.temporal_compression_ratio, v.spatial_compression_ratio, v.config.latent_channels
    return Architecture(model, t, temporal, spatial, channels, text_len, tuple(shape), 1, "ltx2", dict(connectors or {}))


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
    audio: int = 0
    """ltx2: base parameters of the audio stream (names with "audio"), included in `base`."""
    connectors: int = 0
    """ltx2: parameters of the frozen text connectors (not in `base`; never fp8, offloaded or sharded)."""


def count_parameters(arch: Architecture, rank: int, target_modules) -> Counts:
    """Build the transformer on the meta device, attach the LoRA as training does, count."""
    from diffusers import LTX2VideoTransformer3DModel, WanTransformer3DModel
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    from reelora.models.lora import attach_lora
    from reelora.models.registry import family_spec

    spec = family_spec("ltx2" if arch.structure == "ltx2" else "wan")
    cls = LTX2VideoTransformer3DModel if arch.structure == "ltx2" else WanTransformer3DModel
    targets = list(spec.lora_targets) if target_modules is None else target_modules
    connectors = 0
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        transformer = cls(**{k: v for k, v in arch.transformer.items() if not k.startswith("_")})
        if arch.structure == "ltx2":
            from diffusers.pipelines.ltx2 import LTX2TextConnectors

            conf = {k: v for k, v in (arch.connectors or {}).items() if not k.startswith("_")}
            connectors = sum(p.numel() for p in LTX2TextConnectors(**conf).parameters())
        try:
            attach_lora(transformer, rank=rank, alpha=float(rank), target_modules=targets, seed=None)
        except ValueError as exc:
            raise PlanError(f"config key 'lora.target_modules': {exc}") from exc
    base = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n)
    lora = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    blocks = getattr(transformer, spec.blocks)
    block = blocks[0]
    base_block = sum(p.numel() for n, p in block.named_parameters() if "lora_" not in n)
    layers = sum(1 for n, _ in transformer.named_modules() if n.endswith(".lora_A.default"))
    import re

    skip = tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(getattr(transformer, "_skip_layerwise_casting_patterns", None) or ())
    fp8_able = sum(p.numel() for name, m in transformer.named_modules()
                   if isinstance(m, CASTABLE_LAYERS) and "lora_" not in name and not any(re.search(s, name) for s in skip)
                   for p in m.parameters(recurse=False))
    audio = sum(p.numel() for n, p in transformer.named_parameters() if "audio" in n and "lora_" not in n)
    return Counts(base, base_block, len(blocks), lora, layers, fp8_able, audio, connectors)


# ---------------------------------------------------------------------------------------------------------
# Activations


def latent_shape(arch: Architecture, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(channels, latent frames, latent height, latent width) the VAE makes of a clip: Wan (F - 1) / 4 + 1, H / 8, W / 8;
    LTX-2 (F - 1) / 8 + 1, H / 32, W / 32."""
    return (arch.latent_channels, (frames - 1) // arch.vae_temporal + 1, height // arch.vae_spatial, width // arch.vae_spatial)


def tokens(arch: Architecture, latent: tuple[int, int, int, int]) -> int:
    """Transformer sequence length: latent frames x height x width over the patch size (Wan: 1, 2, 2; LTX-2: 1, 1, 1)."""
    pt, ph, pw = arch.patch
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


def ltx2_block_activation_bytes(s: int, text_len: int, dim: int, ffn: int, heads: int, rank: int, lora_block: int,
                                half: bool) -> int:
    """Bytes one LTX-2 block saves for backward for one sample of `s` video tokens, as reelora trains it
    (LTX2Spec.forward: isolate_modalities, one silent audio token; diffusers LTX2VideoTransformerBlock + peft LoRA).

    Only the video stream saves anything: the audio stream's input, text and timestep embedding need no gradient
    and, with the audio-video cross-attention off, no gradient reaches them, so autograd keeps none of its tensors.
    Read off the saved tensors of a real forward (saved_tensors_hooks, storages counted once, parameters left out):
      half (bf16/fp16 autocast):
        s x dim: 6 fp32 (the .float() copies in norm1/norm2/norm3 and in the RMSNorms on q and k: attn1's q and k,
                 attn2's q) + 16 half (norm1/2/3 inputs; the half copy of its input each of the 6 LoRA'd token-side
                 projections keeps, peft casting the input to the fp32 LoRA weights and autocast back; q/k/v/out of
                 the self-attention's SDPA, q/out of the cross-attention's)
        s x ffn: 2 half (FFN hidden before GELU and the second projection's LoRA input)
        s x rank: 8 half (lora_A outputs); text x dim: 4 half (cross-attention k/v LoRA inputs and SDPA k/v) + 1 fp32
        (norm_k); text x rank: 2 half; the LoRA weights' half copies autocast makes (lora_block params x 2 bytes)
      fp32 (train.mixed_precision no): s x dim 15, s x ffn 2, s x rank 8, text x dim 3, text x rank 2, all fp32
      both: RMSNorm statistics (6 per token, 1 per text token, fp32), SDPA's log-sum-exp (2 x heads per token,
      fp32), the cross-attention mask (heads x text), the block's modulation tensors (8 x dim). SDPA (flash or
      memory-efficient on GPU, flash on CPU) never stores the s x s or s x text attention matrix.
    """
    stats = s * (6 + 2 * heads) * 4 + text_len * 4
    if half:
        return (s * dim * (6 * 4 + 16 * 2) + s * ffn * 2 * 2 + s * rank * 8 * 2 + text_len * dim * (4 * 2 + 4)
                + text_len * rank * 2 * 2 + lora_block * 2 + stats + heads * text_len * 2 + 8 * dim * 2)
    return (s * dim * 15 * 4 + s * ffn * 2 * 4 + s * rank * 8 * 4 + text_len * dim * 3 * 4 + text_len * rank * 2 * 4
            + stats + heads * text_len * 4 + 8 * dim * 4)


def ltx2_head_activation_bytes(s: int, text_len: int, dim: int, audio_dim: int, latent_elems: int, half: bool,
                               checkpointing: bool) -> int:
    """Outside the LTX-2 blocks, per sample: the video RoPE's fp32 cos and sin (s x dim each, shared by every block's
    self-attention; with checkpointing the checkpointed blocks hold them as arguments), norm_out's input and
    statistics, the loss's fp32 difference; and the text: fp32 without checkpointing (the cross-attention LoRA's
    input; under half autocast each block keeps its own copies instead), both modalities' text (video dim and audio
    dim) saved as checkpoint inputs with it. The first block's norm1 saves nothing without checkpointing (its input
    comes from the frozen proj_in of latents that need no gradient): subtracted here."""
    c = 2 if half else 4
    head = 2 * s * dim * 4 + s * dim * c + 2 * s * c + dim * c + latent_elems * 4
    if checkpointing:
        return head + text_len * (dim + audio_dim) * c
    first_norm1 = s * dim * 4 + (s * dim * 2 if half else 0) + s * 4 + dim * c
    return head + (0 if half else text_len * dim * 4) - first_norm1


def activation_bytes(arch: Architecture, counts: Counts, s: int, latent_elems: int, rank: int, half: bool,
                     checkpointing: bool) -> dict[str, int]:
    """Per sample: `stored` (saved through the whole forward), `backward` (held while one block runs backward)."""
    t = arch.transformer
    lora_block = counts.lora // counts.blocks
    if arch.structure == "ltx2":
        block = ltx2_block_activation_bytes(s, arch.text_len, arch.dim, arch.ffn, t["num_attention_heads"], rank,
                                            lora_block, half)
        audio_dim = t["audio_num_attention_heads"] * t["audio_attention_head_dim"]
        head = ltx2_head_activation_bytes(s, arch.text_len, arch.dim, audio_dim, latent_elems, half, checkpointing)
    else:
        block = block_activation_bytes(s, arch.text_len, arch.dim, arch.ffn, t["num_attention_heads"], rank, lora_block, half)
        head = head_activation_bytes(s, arch.text_len, arch.dim, latent_elems, half)
    # While a block runs backward, gradients of its activations live besides what it saved. The allocator peaks
    # (`measure_peak_bytes`, BENCHMARKS.md "Memory plan vs measured") come in the FFN's backward: about one
    # tokens x ffn gradient in the compute dtype plus the residual stream's fp32 one; under half autocast
    # without checkpointing about four tokens x ffn (measured on CPU: 4-6 half tokens x ffn).
    ffn_grads = 4 if half and not checkpointing else 1
    grads = s * (ffn_grads * arch.ffn * (2 if half else 4) + arch.dim * 4)
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
    if counts.connectors:  # loaded in the run's dtype with the transformer; not sharded, offloaded or fp8
        rows["frozen text connectors"] = counts.connectors * compute_bytes / GIB
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
    if arch.structure == "ltx2":
        notes.append(f"the audio stream's {counts.audio:,} params are in the frozen base; training runs it on one silent "
                     f"token with isolate_modalities, so it saves no activations")
    if cfg.data.cache is None:
        encoder = "Gemma 3 12B for LTX-2" if arch.structure == "ltx2" else "UMT5-XXL for Wan: ~11 GiB in bf16"
        notes.append(f"data.cache is null: the VAE and the text encoder ({encoder}) also sit "
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
