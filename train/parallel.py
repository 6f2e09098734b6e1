"""How the transformer is spread over processes: a full copy in each (DDP), or sharded with FSDP2.

torchtitan's `parallelize_*` shape: one function applies activation checkpointing, then `fully_shard` to
each transformer block and to the root (train.parallel=fsdp). DDP wrapping stays with `accelerator.prepare`.
Under FSDP every process holds a shard of each weight, so checkpoints and the exported adapter are built
from gathered full state (torch.distributed.checkpoint.state_dict), in the same files and layout as a DDP
or single-process run writes: a checkpoint resumes under either.

Launch FSDP like DDP (`accelerate launch --multi_gpu`, which creates the process group; gloo on CPU);
accelerate's own FSDP plugin is not used, so nothing wraps the model twice.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

# torch.distributed.checkpoint is imported where used: it costs ~0.7 s, and most runs are DDP or one process.


def check_launch(accelerator) -> None:
    """Refuse accelerate's FSDP and DeepSpeed plugins: reelora shards the model itself (train.parallel=fsdp),
    and its checkpoints, export and non-finite guard are written for plain processes (MULTI_GPU/MULTI_CPU).

    Raises:
        ConfigError: naming the launch's distributed_type and what to launch with instead.
    """
    from accelerate.utils import DistributedType

    from reelora.train.config import ConfigError

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(f"accelerate launched with distributed_type {accelerator.distributed_type.value}, which "
                          f"reelora does not use: launch with --multi_gpu (configs/accelerate/multi-gpu-ddp.yaml or "
                          f"fsdp.yaml) and set config key 'train.parallel' to ddp or fsdp")


def sharded(cfg, accelerator) -> bool:
    """Whether this run shards the transformer (train.parallel=fsdp with more than one process)."""
    return cfg.train.parallel == "fsdp" and accelerator.num_processes > 1


def parallelize(transformer: torch.nn.Module, spec, cfg, mesh=None) -> None:
    """Activation checkpointing, then (with a device mesh) FSDP2: each block of `spec.blocks`, then the root
    (with two experts: each expert's blocks, then each expert, then the module holding both).

    Each block is one unit of all-gather (forward, backward) and reduce-scatter (its LoRA gradients); the
    root takes what is left (patch/time/text embeddings, norms, head). Gradients (LoRA only) are reduced in
    fp32 into the fp32 LoRA shards the optimizer steps.

    Args:
        mesh: a 1-D DeviceMesh over the data-parallel processes; None leaves the model unsharded.
    """
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()  # diffusers checkpoints block by block (non-reentrant)
    if mesh is None:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # No param_dtype: the frozen base is already stored in train.mixed_precision's dtype and the LoRA weights
    # in fp32, and autocast casts for compute as under DDP. A bf16 param_dtype would also cast the forward
    # inputs (the timesteps among them) to bf16: on tiny-wan that moved the first loss by 5e-4.
    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    # The root returns a reshaped view of its output; the specs' losses only read it (no in-place op that
    # would skip FSDP's pre-backward hook), so the per-process warning about it is noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    kwargs = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=cfg.train.fsdp_reshard_after_forward)
    for denoiser in denoisers(transformer):
        for block in getattr(denoiser, spec.blocks):
            fully_shard(block, **kwargs)
        if denoiser is not transformer:
            fully_shard(denoiser, **kwargs)  # an expert: its embeddings and head are one unit, gathered when it runs
    fully_shard(transformer, **kwargs)


def denoisers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformers in the training module: both experts of a two-expert backbone (models/wan22.Experts,
    each sharded on its own, trained or not: a step runs one and the other stays sharded), else the module."""
    return [model.transformer, model.transformer_2] if hasattr(model, "adapted") else [model]


@contextlib.contextmanager
def no_sync(accelerator, model: torch.nn.Module):
    """Accumulate this micro-batch's gradients locally; the last micro-batch of the step reduces them once.

    DDP: `accelerator.no_sync`. FSDP2: `set_requires_gradient_sync(False)`, which also sums the micro-batches
    before the reduce-scatter as DDP does before its all-reduce (same bits as DDP with 2 processes).
    """
    if not is_sharded(model):
        with accelerator.no_sync(model):
            yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# Meshes this process made. A mesh holds its process groups (`_pg_registry`) and stays alive after training
# (DTensor's sharding caches keep it), so destroy_process_group() alone leaves gloo's worker threads running;
# one of them then frees a finished collective's tensors while Python finalizes, takes the GIL and aborts
# the process ("terminate called without an active exception"; pytorch/pytorch#190489). end_process_group()
# lets the groups go while Python is alive, so their destructors join those threads.
_MESHES: list = []


def data_parallel_mesh(accelerator):
    """A 1-D device mesh over all processes, on the process group `accelerate launch` created."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    _MESHES.append(mesh)
    return mesh


def end_process_group() -> None:
    """Destroy the process group and let every reference to it go, joining gloo's threads while Python is
    alive. Every multi-process entry point calls this before it returns (see _MESHES)."""
    import gc

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for mesh in _MESHES:
        getattr(mesh, "_pg_registry", {}).clear()
    _MESHES.clear()
    gc.collect()


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _gather_options():
    """Full tensors, gathered to rank 0's CPU memory (other ranks get {}); the frozen base is never gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


# ---------------------------------------------------------------------------------------------------------
# Full state for checkpoints and export. Every rank must call these (they gather); rank 0 gets the result.


def full_lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights as `models.lora.lora_state_dict` names them, full shapes; {} on ranks > 0 under FSDP."""
    from peft.utils import get_peft_model_state_dict

    from reelora.models.lora import lora_state_dict

    if not is_sharded(model):
        return lora_state_dict(model)
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_gather_options())
    if not sd:
        return {}
    adapted = getattr(model, "adapted", None)
    if adapted is None:
        return get_peft_model_state_dict(model, state_dict=sd)
    # two experts: each expert's keys under its component name, as lora_state_dict names them
    out = {}
    for e in adapted:
        mine = {k[len(e) + 1:]: v for k, v in sd.items() if k.startswith(f"{e}.")}
        out.update({f"{e}.{k}": v for k, v in get_peft_model_state_dict(getattr(model, e), state_dict=mine).items()})
    return out


def full_optimizer_state_dict(model: torch.nn.Module, optimizer) -> dict:
    """`optimizer.state_dict()` with full tensors, keyed by parameter index; {} on ranks > 0 under FSDP."""
    opt = _unwrap(optimizer)
    if not is_sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, opt, options=_gather_options())  # keyed by parameter name
    if not sd:
        return {}
    index = {name: i for i, name in enumerate(n for g in sd["param_groups"] for n in g["params"])}
    return {"state": {index[n]: s for n, s in sd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]}


def loadable_optimizer(model: torch.nn.Module, optimizer):
    """What `checkpoint.load` restores into: the optimizer itself, or under FSDP a view whose
    `load_state_dict` takes the full index-keyed state and keeps this rank's shard of it."""
    return _ShardedOptimizer(model, _unwrap(optimizer)) if is_sharded(model) else optimizer


class _ShardedOptimizer:
    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()  # the parameter layout checkpoint.load compares against

    def load_state_dict(self, sd: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = {id(p): n for n, p in self.model.named_parameters()}
        order = [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        by_name = {"state": {order[i]: s for i, s in sd["state"].items()},
                   "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]}
        # Every rank read the same full state from disk: each keeps its shard, nothing is broadcast. Not strict:
        # a parameter that has not been stepped yet has no state (with two experts, the one no step has trained
        # so far), as a plain optimizer's state_dict leaves it out; checkpoint.load already compared the layout.
        set_optimizer_state_dict(self.model, self.optimizer, by_name,
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        # set_optimizer_state_dict first makes state for every parameter with a zero-gradient step; a parameter
        # without saved state must start from none (AdamW's step count sets its bias correction), as it would
        # have in the run that wrote the checkpoint
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if names[id(p)] not in by_name["state"]:
                    self.optimizer.state.pop(p, None)


def _unwrap(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
