"""The one training config: dataclasses with a docstring per field, filled from YAML + dotted overrides.

Each option is defined exactly once, here (litgpt/torchtitan style): the field's type and default, the
docstring under it (which `python train.py --help` prints), and its validation in `__post_init__`.
`load_config("configs/tiny-wan.yaml", ["lora.rank=8"])` returns a validated `Config` or raises
`ConfigError` naming the offending key, before anything heavy is imported or loaded.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reelora.safeyaml import YAMLLimitError, load_yaml, read_yaml_file, short_repr

CONFIG_MAX_VALUES = 100_000  # a training config has a few hundred values; more is a mistake or an alias bomb
from reelora.models.settings import SampleSettings, bound_error


class ConfigError(ValueError):
    """A config problem a user can fix: the message names the key (and file) at fault."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r}: {msg}")


@dataclass
class DataConfig:
    shards: str | None = None
    """Directory of WebDataset clip shards with an index.json (built by `reelora shards build`)."""
    cache: str | None = None
    """Latent/text cache directory built by `reelora cache`; null encodes every batch on the fly with the VAE
    and text encoder kept in memory. When set, every training clip must be in the cache (else an error says so)."""
    caption_dropout: float = 0.1
    """Probability of training a sample with the empty prompt instead of its caption (keeps CFG working)."""
    num_workers: int = 0
    """DataLoader worker processes per rank decoding clips or reading cache entries (0 = in the main process)."""

    def __post_init__(self):
        _check(0.0 <= self.caption_dropout <= 1.0, "data.caption_dropout", f"must be in [0, 1], got {self.caption_dropout}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")



@dataclass
class LoraConfig:
    rank: int = 16
    """LoRA rank r (size of the low-rank update)."""
    alpha: float = 16.0
    """LoRA alpha; the update is scaled by alpha / rank (recorded in the adapter so loaders scale it right)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch input during training."""
    target_modules: list[str] | str | None = None
    """Transformer modules to adapt: a list of module-name suffixes (e.g. [to_q, to_k]) or one regex matched
    against full module names (e.g. 'blocks\\.\\d+\\.attn1\\.to_(q|v)'); null uses the model family's defaults."""
    init: Literal["default", "gaussian", "orthogonal"] = "default"
    """LoRA weight init (peft `init_lora_weights`): default (Kaiming A, zero B), gaussian, orthogonal. Inits that
    rewrite the base weights (pissa, olora, loftq) are not offered: exported adapters must apply to the stock base."""
    use_rslora: bool = False
    """Rank-stabilised LoRA (peft `use_rslora`): scale the update by alpha / sqrt(rank) instead of alpha / rank,
    so raising the rank does not shrink the update. Recorded in the adapter's metadata (diffusers applies it);
    the ComfyUI file's `.alpha` is alpha * sqrt(rank), which ComfyUI's alpha / rank turns into the same scale."""
    use_dora: bool = False
    """DoRA, weight-decomposed LoRA (peft `use_dora`): each adapted layer also trains a magnitude per output
    feature and applies LoRA to the weight's direction. Slower steps (each forward takes the norm of the merged
    weight). The adapter holds `lora_magnitude_vector` tensors that diffusers' loader reads; no ComfyUI file is
    written (ComfyUI's `dora_scale` is normalised differently)."""

    experts: Literal["both", "high", "low"] = "both"
    """Two-expert backbones (Wan2.2-T2V-A14B): which denoiser gets a LoRA. "both": one LoRA each, every micro-step
    training one of them on its own noise range (the high-noise `transformer` at sigma >= the model's
    boundary_ratio, i.e. timesteps >= boundary_ratio x 1000, the low-noise `transformer_2` below; the expert is
    drawn with the odds the timestep distribution gives each range); "high" or "low": that expert only, on its
    range. The adapter holds one file per trained expert (diffusers and ComfyUI), and sampling applies each in
    its range. Backbones with one transformer accept only "both" (the default)."""

    def __post_init__(self):
        _check(self.rank >= 1, "lora.rank", f"must be >= 1, got {self.rank}")
        _check(self.alpha > 0, "lora.alpha", f"must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, list):
            _check(len(self.target_modules) > 0, "lora.target_modules", "empty list; use null for the family defaults")
        if isinstance(self.target_modules, str):
            import re

            try:
                re.compile(self.target_modules)
            except re.error as exc:
                raise ConfigError(f"config key 'lora.target_modules': invalid regex {self.target_modules!r}: {exc}") from exc


@dataclass
class OptimConfig:
    name: Literal["adamw", "adamw8bit"] = "adamw"
    """Optimizer: adamw (torch) or adamw8bit (bitsandbytes; must be installed)."""
    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay on the LoRA weights."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Linear warmup from 0 to `lr` over this many optimizer steps."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after warmup, down to lr * min_lr_ratio at train.max_steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of `lr` for the linear and cosine schedules."""

    def __post_init__(self):
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", f"must be two numbers in [0, 1), got {self.betas}")
        _check(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class TrainConfig:
    max_steps: int = 1000
    """Number of optimizer steps to train for."""
    batch_size: int = 1
    """Clips per micro-batch on each process (global batch = batch_size * grad_accum * processes)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; null disables clipping (the norm is still logged)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast precision (accelerate). With bf16/fp16 the frozen base weights are stored in that dtype and
    the LoRA weights stay fp32."""
    gradient_checkpointing: bool = False
    """Recompute transformer block activations in backward to save memory."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """How several processes (`accelerate launch --multi_gpu`) share the model: "ddp" keeps a full copy in
    each and all-reduces the LoRA gradients; "fsdp" shards the frozen base, LoRA weights, gradients and
    optimizer state across them with FSDP2 (`fully_shard` per transformer block, see train/parallel.py), for
    backbones whose weights do not fit one GPU. A single process ignores it."""
    fsdp_reshard_after_forward: bool = True
    """train.parallel=fsdp: free each block's gathered weights after its forward and gather them again for
    backward (less memory, more communication); false keeps them gathered from forward to backward."""
    base_storage: Literal["auto", "fp8"] = "auto"
    """How the frozen base's block weights are stored: "auto" in train.mixed_precision's dtype (fp32 for "no");
    "fp8" in float8_e4m3fn, each Linear upcast to that dtype for its own forward (diffusers layerwise casting:
    half the bytes of bf16, a quarter of fp32; LoRA weights, norms, embeddings and the head stay as they
    are). Changes the maths slightly (the base is rounded to fp8). Saves peak memory only with
    train.gradient_checkpointing (see train/memory.py)."""
    offload_blocks: int = 0
    """0 keeps the frozen base on the device; N > 0 keeps the transformer blocks' frozen weights in CPU memory
    and copies them to the device N blocks at a time for each forward and backward recompute (diffusers group
    offloading; the LoRA weights, embeddings and head stay on the device). Exact: same losses, slower steps.
    Needs train.gradient_checkpointing=true and one process (DDP wants every weight on the device)."""
    compile_blocks: Literal["no", "inductor", "aot_eager"] = "no"
    """torch.compile each transformer block with this backend (diffusers `compile_repeated_blocks`, one compile
    for all blocks): "inductor" is the fast one (needs a C++ compiler on CPU, Triton on GPU); "aot_eager"
    compiles without generating kernels (a quick check that the blocks trace). The first steps are slow."""
    seed: int = 0
    """Seed for LoRA init, data order, and the per-step noise/timestep/caption-dropout generators."""
    timestep_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    """Distribution of the flow-matching time t in (0, 1) before the shift."""
    logit_mean: float = 0.0
    """Mean of the normal whose sigmoid gives t (timestep_sampling: logit_normal)."""
    logit_std: float = 1.0
    """Std of the normal whose sigmoid gives t (timestep_sampling: logit_normal)."""
    flow_shift: float | None = None
    """Timestep shift s: t' = s t / (1 + (s - 1) t); > 1 favours noisier times. null takes the model family's
    `flow_shift`, the shift its sampler runs with."""
    deterministic: bool = False
    """Bitwise-reproducible math: torch deterministic algorithms, no cuDNN autotuning, and oneDNN disabled on
    CPU (its convolutions differ in the last bits between processes). Needed for exact resume; slower."""
    checkpoint_every: int = 500
    """Write a resumable checkpoint every this many steps (and at the end); 0 only at the end."""
    keep_last: int = 2
    """Complete checkpoints to keep; older ones are removed after a newer one is complete."""
    output_dir: str = "outputs/run"
    """Run directory: checkpoints/, adapter/, samples/, logs/."""
    resume: str | None = None
    """null starts fresh (refusing a run dir that already has checkpoints), 'latest' resumes from the newest
    complete checkpoint in output_dir (or starts fresh if none), or a path to a checkpoints/step-NNNNNN folder."""

    def __post_init__(self):
        for key in ("max_steps", "batch_size", "grad_accum"):
            _check(getattr(self, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "train.max_grad_norm", f"must be > 0 or null, got {self.max_grad_norm}")
        _check(self.logit_std > 0, "train.logit_std", f"must be > 0, got {self.logit_std}")
        _check(self.flow_shift is None or self.flow_shift > 0, "train.flow_shift", f"must be > 0, got {self.flow_shift}")
        _check(self.parallel != "fsdp" or self.mixed_precision != "fp16", "train.parallel",
               "fsdp runs with train.mixed_precision no or bf16 (fp16 needs a sharded gradient scaler)")
        _check(self.offload_blocks >= 0, "train.offload_blocks", f"must be >= 0, got {self.offload_blocks}")
        _check(not self.offload_blocks or self.gradient_checkpointing, "train.offload_blocks",
               "needs train.gradient_checkpointing=true: without it autograd keeps every block's onloaded weights "
               "on the device from forward to backward, so offloading saves nothing")
        for key in ("base_storage", "offload_blocks", "compile_blocks"):
            on = getattr(self, key) not in ("auto", 0, "no")
            _check(not (on and self.parallel == "fsdp"), f"train.{key}",
                   "not with train.parallel=fsdp (FSDP manages the base's storage and placement itself); set "
                   "train.parallel=ddp, or leave this option off")
        _check(self.compile_blocks == "no" or self.base_storage != "fp8", "train.compile_blocks",
               "not with train.base_storage=fp8: diffusers' layerwise casting changes the weights' dtype inside each "
               "block's forward, which torch.compile does not follow (the compiled block computes with fp8 weights)")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        _check(self.keep_last >= 1, "train.keep_last", f"must be >= 1, got {self.keep_last}")
        _check(bool(self.output_dir), "train.output_dir", "must not be empty")


@dataclass
class ValidationConfig:
    every: int = 0
    """Validate every this many steps (and at the end); 0 disables validation."""
    shards: str | None = None
    """Held-out shard directory for the validation loss; null uses a fixed set of `num_clips` training clips
    (a monitoring loss, not a held-out one)."""
    num_clips: int = 8
    """Clips used for the validation loss."""
    quantiles: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    """Quantiles of the training timestep distribution at which the validation loss is measured, with noise
    fixed per clip so values are comparable across steps."""
    prompts: list[str] = field(default_factory=list)
    """Prompts sampled at each validation (one clip each, split across processes); empty = no samples."""
    seed: int = 0
    """Sampling seed; prompt i uses seed + i."""
    sample: SampleSettings = field(default_factory=SampleSettings)
    """How validation samples are drawn: the same settings as `reelora sample` (models/settings.py), unset
    ones taking the model family's defaults."""
    sign_cert: str | None = None
    """PEM certificate chain signing the samples' C2PA manifests (as `reelora sample --sign-cert`); null takes
    $REELORA_SIGN_CERT, else a local development certificate that no trust list knows."""
    sign_key: str | None = None
    """The signing certificate's PEM private key (with `sign_cert`)."""

    def __post_init__(self):
        _check((self.sign_cert is None) == (self.sign_key is None), "validation.sign_cert",
               "give both validation.sign_cert and validation.sign_key, or neither")
        _check(self.every >= 0, "validation.every", f"must be >= 0, got {self.every}")
        _check(self.num_clips >= 1, "validation.num_clips", f"must be >= 1, got {self.num_clips}")
        _check(len(self.quantiles) > 0 and all(0 < q < 1 for q in self.quantiles), "validation.quantiles", f"must be numbers in (0, 1), got {self.quantiles}")
        _check(bound_error("seed", self.seed) is None, "validation.seed", str(bound_error("seed", self.seed)))


@dataclass
class LogConfig:
    wandb_project: str | None = None
    """Weights & Biases project; null disables wandb. Runs offline unless a wandb login/API key exists
    (WANDB_MODE in the environment wins)."""
    wandb_run_name: str | None = None
    """wandb run name (default: the output_dir's name)."""
    every: int = 1
    """Log metrics every this many steps (JSONL at OUTPUT/logs/metrics.jsonl, wandb, progress bar)."""
    progress_bar: bool = True
    """Show a tqdm progress bar on the main process."""

    def __post_init__(self):
        _check(self.every >= 1, "log.every", f"must be >= 1, got {self.every}")


@dataclass
class Config:
    model: str = "tiny-wan"
    """Backbone: a built-in tiny name (tiny-wan, tiny-ltx), a local diffusers-format directory or a hub id."""
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        _check(bool(self.model), "model", "must name a backbone")
        _check(not (self.lora.use_dora and self.train.base_storage == "fp8"), "lora.use_dora",
               "not with train.base_storage=fp8: DoRA reads each adapted layer's base weight outside that layer's "
               "forward (for its norm), where diffusers' layerwise casting keeps it in fp8; use base_storage=auto")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Building a Config from plain data, with errors that name the key


def from_dict(data: dict | None, cls: type = Config, prefix: str = "") -> Any:
    """Build dataclass `cls` from nested plain data, type-checking each value and naming bad keys."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(f"unknown config key {prefix + str(key)!r}; valid keys in {where}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        kwargs[name] = _coerce(data[name], hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive, __post_init__ raises ConfigError
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: {exc}") from exc


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp` (dataclass, Literal, Optional/Union, list, scalar)."""
    if dataclasses.is_dataclass(tp):
        return from_dict(value, tp, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"config key {key!r}: must not be null")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key {key!r}: {short_repr(value)} is not {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value is False and "no" in allowed:  # YAML reads an unquoted `no` (train.mixed_precision=no) as false
            return "no"
        if value not in allowed:
            raise ConfigError(f"config key {key!r}: {short_repr(value)} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {short_repr(value)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if value is None:
        raise ConfigError(f"config key {key!r}: must not be null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true or false, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:  # torch generators and tensors take 64-bit integers
                raise ConfigError(f"config key {key!r}: {short_repr(value)} is out of range (a 64-bit integer)")
            return value
        raise ConfigError(f"config key {key!r}: expected an integer, got {short_repr(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"config key {key!r}: must be finite, got {short_repr(value)}")
            return float(value)
        raise ConfigError(f"config key {key!r}: expected a number, got {short_repr(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r}: expected a string, got {short_repr(value)}")
    raise ConfigError(f"config key {key!r}: unsupported type {tp}")  # pragma: no cover


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return {type(None): "null", str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(tp, str(tp))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'lora.rank=8' -> (['lora', 'rank'], 8); the value is parsed as YAML ('null', '[a, b]', '1e-4')."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. lora.rank=8")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    try:
        value = load_yaml(raw, f"override {key}", max_values=CONFIG_MAX_VALUES) if raw.strip() else ""
    except YAMLLimitError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_float(value):
        value = float(value)  # YAML 1.1 reads '1e-4' as a string
    return key.split("."), value


def _looks_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return any(c in s for c in ".eE") and s.strip().lower() not in ("nan", "inf", "-inf", "infinity")


def _fix_floats(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _fix_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_floats(v) for v in node]
    if isinstance(node, str) and _looks_float(node):
        return float(node)
    return node


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read YAML `path` (optional), apply dotted `overrides`, validate, and return the Config.

    Raises:
        ConfigError: unreadable file, unknown key, bad value; the message names the file and key.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            data = read_yaml_file(p, max_values=CONFIG_MAX_VALUES) or {}
        except YAMLLimitError as exc:
            raise ConfigError(str(exc)) from None
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {str(p)!r}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r}: top level must be a mapping of sections")
        data = _fix_floats(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[:i + 1])!r} is not a section")
            node = child
        node[keys[-1]] = value
    try:
        return from_dict(data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def iter_options(cls: type = Config, prefix: str = ""):
    """Yield (dotted key, type name, default, docstring) for every leaf option."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_options(tp, prefix + f.name + ".")
        else:
            yield prefix + f.name, _type_name(tp), getattr(defaults, f.name), docs.get(f.name, "")


def help_text() -> str:
    lines = ["config options (set in YAML or as KEY=VALUE overrides):", ""]
    for key, tname, default, doc in iter_options():
        lines.append(f"  {key} = {json.dumps(default)}   ({tname})")
        lines.extend("      " + ln for ln in textwrap.wrap(doc, 96))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Config:
    """`train.py --config CFG [key=value ...]` -> Config; `--help` prints every option with its docstring."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a LoRA adapter on a video diffusion backbone. Run with `accelerate launch train.py "
        "--config configs/X.yaml [key=value ...]` (plain `python train.py` runs one process).",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. lora.rank=8 train.max_steps=10")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        raise SystemExit(0)
    return cfg
