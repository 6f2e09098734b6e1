"""Memory tools for the frozen base, from diffusers: fp8 storage, block offloading, regional compilation.

`apply(transformer, spec, cfg, device, compute_dtype)` runs inside `loop.build_model_and_optimizer`, after
the LoRA attach and activation checkpointing, before the optimizer is built. Each tool touches the frozen
base only; the LoRA weights stay fp32, trainable and on the device, so the optimizer, checkpoints and the
exported adapter are the same as without them.

- train.base_storage=fp8: diffusers' layerwise casting (`ModelMixin.enable_layerwise_casting`) stores each
  frozen Linear of the blocks in float8_e4m3fn and upcasts it to the run's dtype for its forward. Its default
  skip patterns keep peft's lora_A/lora_B, norms, patch/condition embedders and the head in full precision.
  Works under DDP (the fp8 weights are left out of DDP's start-up broadcast).
- train.offload_blocks=N: the blocks' frozen weights live in CPU memory and are copied to the device N blocks
  at a time for their forward (and for the recompute in backward), with diffusers' group-offloading hook
  (`hooks.group_offloading.ModuleGroup`). `enable_group_offload` itself cannot be used for training: it moves
  every parameter of a block, LoRA included, so after backward the optimizer would find the LoRA weights on
  the CPU and their gradients on the GPU. Here each group holds only the frozen parameters and buffers. In
  backward a group goes back to the CPU once its blocks' backward is done, not at the end of their recompute:
  autograd saved some of those weights themselves (a norm's weight), and moving them away before the
  backward uses them breaks it (measured on an H100: "Recomputed values ... have different metadata").
- train.compile_blocks=BACKEND: `ModelMixin.compile_repeated_blocks` (torch.compile of each transformer
  block, which the model names in `_repeated_blocks`): one compile serves all blocks.

Why offloading and fp8 need activation checkpointing: autograd keeps the weight each Linear computed with
until backward (as the saved `weight.t()` for the input gradient). Without checkpointing every block's
upcast (fp8) or onloaded (offload) copy therefore stays alive from forward to backward, and the peak is no
lower than without the tool (fp8: higher, the fp8 copy comes on top). With checkpointing only the block
being recomputed holds such copies.
"""
from __future__ import annotations

import functools

import torch

FP8 = torch.float8_e4m3fn
_GROUP_OFFLOADING = "group_offloading"  # diffusers' hook name (hooks.group_offloading._GROUP_OFFLOADING)


def apply(transformer: torch.nn.Module, spec, cfg, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Apply the configured memory tools to `transformer` (LoRA attached, checkpointing set) in place: the
    transformer, or each expert of a two-expert training module (models/wan22.Experts)."""
    from reelora.train.parallel import denoisers

    t = cfg.train
    if t.base_storage == "fp8":
        store_base_fp8(transformer, compute_dtype)
    if t.offload_blocks:
        for denoiser in denoisers(transformer):  # an expert that is not run this step keeps all its blocks offloaded
            offload_frozen_blocks(denoiser, getattr(denoiser, spec.blocks), device, t.offload_blocks)
    else:
        trainable_to(transformer, device)
    if (t.base_storage == "fp8" or t.offload_blocks) and t.gradient_checkpointing:
        # The offload hook runs in the block's post-forward; torch's checkpoint stops the recompute right after
        # the last tensor backward needs, before it, so every block would stay onloaded after backward (the
        # same would hold for a cast layer that is the last op of a block). Recompute whole blocks instead.
        transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_whole_block)
    if t.compile_blocks != "no":
        for denoiser in denoisers(transformer):
            compile_blocks(denoiser, t.compile_blocks)


def store_base_fp8(transformer: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Store the frozen Linear weights in fp8 (upcast to `compute_dtype` per layer for its forward).

    diffusers skips its default patterns (norms, embeddings, proj_out), the model's
    `_skip_layerwise_casting_patterns` and peft's adapter layers (lora_A, lora_B, ...).
    """
    from reelora.train.parallel import denoisers

    for denoiser in denoisers(transformer):
        denoiser.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute_dtype)
    cast = [n for n, p in transformer.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if cast:  # diffusers' skip list changed: refuse rather than train fp8 LoRA weights
        raise RuntimeError(f"fp8 storage reached trainable LoRA weights ({cast[:3]}); diffusers' skip patterns changed")
    # DDP broadcasts every parameter from rank 0 when it wraps the model, and gloo has no fp8 type ("Invalid
    # scalar type"). Every rank loaded the same frozen weights, so there is nothing to broadcast: DDP skips them.
    fp8 = [n for n, p in transformer.named_parameters() if p.dtype == FP8]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(transformer, fp8)


def offload_frozen_blocks(transformer: torch.nn.Module, blocks: torch.nn.ModuleList, device: torch.device,
                          per_group: int) -> None:
    """Keep the frozen weights of `blocks` in CPU memory, onloading `per_group` blocks at a time.

    Everything else (embeddings, head, the LoRA weights) goes to `device` and stays there.
    """
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import GroupOffloadingConfig, GroupOffloadingType, ModuleGroup

    device, cpu = torch.device(device), torch.device("cpu")
    in_blocks = set()
    for block in blocks:
        in_blocks.update(id(t) for t in [*block.parameters(), *block.buffers()])
    for p in transformer.parameters():  # not offloaded: the parts outside the blocks and every LoRA weight
        if p.requires_grad or id(p) not in in_blocks:
            p.data = p.data.to(device)
    for name, b in transformer.named_buffers():
        if id(b) not in in_blocks:
            b.data = b.data.to(device)
    # On CUDA the copies are queued on the compute stream itself: ordered with the compute without an extra
    # synchronisation, from pinned host copies made once (a frozen weight is never copied back).
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    config = GroupOffloadingConfig(onload_device=device, offload_device=cpu, offload_type=GroupOffloadingType.BLOCK_LEVEL,
                                   non_blocking=stream is not None, record_stream=False, low_cpu_mem_usage=False,
                                   num_blocks_per_group=per_group, stream=stream)
    for i in range(0, len(blocks), per_group):
        members = list(blocks[i: i + per_group])
        frozen = [p for m in members for p in m.parameters() if not p.requires_grad]
        buffers = [b for m in members for b in m.buffers()]
        for t in (*frozen, *buffers):
            t.data = t.data.to(cpu)
        group = ModuleGroup(modules=[], offload_device=cpu, onload_device=device, offload_leader=members[-1],
                            onload_leader=members[0], parameters=frozen, buffers=buffers, non_blocking=stream is not None,
                            stream=stream, record_stream=False, low_cpu_mem_usage=False, onload_self=True,
                            group_id=f"blocks_{i}_{i + len(members) - 1}")
        for m in members:
            HookRegistry.check_if_exists_or_initialize(m).register_hook(_training_offload_hook()(group, config=config),
                                                                         _GROUP_OFFLOADING)


@functools.cache
def _training_offload_hook() -> type:
    from diffusers.hooks.group_offloading import GroupOffloadingHook

    class TrainingOffloadHook(GroupOffloadingHook):
        """diffusers' group-offloading hook, for checkpoint recomputes in backward too. Backward runs the blocks
        last first, so there the group's first recomputed block onloads it (diffusers onloads at the group's
        first block in forward order), and the recompute leaves it onloaded: `checkpoint_whole_block` offloads
        it once the backward of the group's first block is done."""

        def pre_forward(self, module, *args, **kwargs):
            if torch._C._current_graph_task_id() != -1:  # inside backward: a checkpoint recompute
                params = self.group.parameters or self.group.buffers
                if params and params[0].device == self.group.offload_device:
                    self.group.onload_()
                return args, kwargs  # the recompute's inputs are the forward's, already on the device
            return super().pre_forward(module, *args, **kwargs)

        def post_forward(self, module, output):
            if torch._C._current_graph_task_id() != -1:  # inside backward: a checkpoint recompute
                return output
            return super().post_forward(module, output)

    return TrainingOffloadHook


def _offload_group(module):
    """The offload group whose first block is `module` (the last of the group whose backward runs), or None."""
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
    return hook.group if hook is not None and hook.group.onload_leader is module else None


def trainable_to(transformer: torch.nn.Module, device: torch.device) -> None:
    """Move the LoRA weights to `device` (they were made where the base was loaded)."""
    for p in transformer.parameters():
        if p.requires_grad and p.device != torch.device(device):
            p.data = p.data.to(device)


def checkpoint_whole_block(function, *args, **kwargs):
    """diffusers' default checkpoint (non-reentrant), recomputing the whole block so its post-forward hooks run
    (fp8: each layer back to fp8 storage). An offload group goes back to the CPU when the gradient of its first
    block's input is complete, i.e. when the group's backward is done (a group whose input needs no gradient,
    the first one, stays onloaded until its next forward)."""
    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

    with set_checkpoint_early_stop(False):
        out = checkpoint(function, *args, use_reentrant=False, **kwargs)
    group = _offload_group(function)
    if group is not None and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
        args[0].register_hook(lambda grad: group.offload_())
    return out


def compile_blocks(transformer: torch.nn.Module, backend: str) -> None:
    """torch.compile each repeated block (diffusers' regional compilation), with `backend`."""
    transformer.compile_repeated_blocks(backend=backend)


# ---------------------------------------------------------------------------------------------------------
# What tests and the memory plan measure


def frozen_bytes(transformer: torch.nn.Module) -> int:
    """Bytes of the frozen base's parameters and buffers as stored (LoRA weights left out)."""
    seen, total = set(), 0
    for t in [*(p for p in transformer.parameters() if not p.requires_grad), *transformer.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.nelement() * t.element_size()
    return total


def offloaded_blocks(transformer: torch.nn.Module) -> int:
    """How many modules carry the block-offloading hook (0: train.offload_blocks is off)."""
    return sum(1 for m in transformer.modules()
               if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(_GROUP_OFFLOADING))


def compiled_blocks(transformer: torch.nn.Module) -> int:
    """How many modules torch.compile wraps (0: train.compile_blocks is off)."""
    return sum(1 for m in transformer.modules() if getattr(m, "_compiled_call_impl", None) is not None)
