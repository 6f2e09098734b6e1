"""Memory options on tiny-wan (CPU): fp8 storage of the frozen base, block offloading, regional compilation.

Each option trains through `run`, compared with the plain run; the model-level checks build the model the way
the loop does (`load_backbone` + `build_model_and_optimizer`) and look at what each option changed.
On CPU the offload "device" is the CPU itself: what is checked here is that the hooks move the frozen weights
and only them, at the right moments, and that the maths is unchanged; the memory saving is measured on a GPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from reelora.train import memory
from reelora.train.config import ConfigError, load_config
from reelora.train.loop import build_model_and_optimizer, check_resume_config, load_backbone, resume_config, run
from tests.train.conftest import tiny_cfg

ROOT = Path(__file__).parents[2]
TWO_STEPS = ("train.max_steps=2", "train.checkpoint_every=0")
# fp8 (e4m3: 3 mantissa bits) rounds each frozen block weight by up to 2^-4 relative; on tiny-wan the first
# losses moved by 3e-4..7e-4 relative (bf16 autocast moves them by about as much). 3e-3 leaves room for the
# fixture cache's last-bit differences between sessions, and is far below a real change (an untrained or
# wrongly scaled base moves the loss by tens of percent).
FP8_LOSS_RTOL = 3e-3


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["train/loss"] for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "pytorch_lora_weights.safetensors")


CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0)


def _build(tmp_path, shards, cache, *overrides):
    """The transformer as `run` builds it (LoRA attached, options applied), and its optimizer."""
    cfg = tiny_cfg(tmp_path / "unused", shards, cache, *overrides)
    spec, comps = load_backbone(cfg, CPU, cached=True)
    model, optimizer, _, params = build_model_and_optimizer(cfg, spec, comps, CPU)
    return spec, comps, model, optimizer, params


def _forward_backward(spec, comps, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents, noise = torch.randn(2, 16, 2, 8, 8, generator=g), torch.randn(2, 16, 2, 8, 8, generator=g)
    text = {"prompt_embeds": torch.randn(2, 8, 32, generator=g)}
    pred, target = spec.forward(comps, model, latents, noise, torch.tensor([0.3, 0.7]), text)
    loss = (pred - target).pow(2).mean()
    loss.backward()
    return loss.detach()


def _cast_layers(model) -> dict[str, torch.nn.Module]:
    """The modules diffusers' layerwise casting hooked (the frozen Linears it stores in fp8)."""
    return {n: m for n, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("layerwise_casting")}


# ---------------------------------------------------------------------------------------------------------
# train.base_storage=fp8


def test_fp8_stores_the_frozen_block_linears_in_a_quarter_of_the_bytes(tmp_path, shards, cache):
    _, _, plain, _, _ = _build(tmp_path, shards, cache)
    _, _, fp8, optimizer, params = _build(tmp_path, shards, cache, "train.base_storage=fp8")
    cast = _cast_layers(fp8)
    # Every frozen Linear of the blocks (the base layers under the LoRA wrappers: attn1/attn2 q, k, v, out and
    # the two FFN layers), nothing else: LoRA, norms, embedders and the head keep their precision.
    assert sorted(cast) == sorted(f"blocks.{b}.{m}.base_layer" for b in range(2) for m in
                                  [f"attn{a}.to_{x}" for a in (1, 2) for x in ("q", "k", "v", "out.0")] + ["ffn.net.0.proj", "ffn.net.2"])
    assert all(p.dtype == torch.float8_e4m3fn for m in cast.values() for p in m.parameters())
    cast_elems = sum(p.numel() for m in cast.values() for p in m.parameters())
    # The stored bytes drop by exactly 3 bytes per cast element (fp32 -> fp8); the rest is untouched.
    assert memory.frozen_bytes(plain) - memory.frozen_bytes(fp8) == 3 * cast_elems
    # LoRA weights: fp32, trainable, and exactly what the optimizer steps.
    lora = {n: p for n, p in fp8.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    assert {id(p) for p in params} == {id(p) for p in lora.values()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in lora.values()}


def test_fp8_halves_the_stored_base_of_wan_1_3b_in_bf16():
    """On the published 1.3B architecture (meta device) the cast Linears are nearly the whole base."""
    from diffusers import WanTransformer3DModel

    from reelora.models.lora import attach_lora
    from reelora.models.wan import WAN_14B

    def build():
        with torch.device("meta"):
            t = WanTransformer3DModel(**{**WAN_14B, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30})
            t.to(torch.bfloat16)
            attach_lora(t, rank=32, alpha=32.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
        return t

    bf16 = memory.frozen_bytes(build())
    t = build()
    memory.store_base_fp8(t, torch.bfloat16)
    fp8 = memory.frozen_bytes(t)
    assert 2.80e9 < bf16 < 2.88e9  # ~1.42e9 params x 2 bytes
    assert 0.50 < fp8 / bf16 < 0.52  # 1.446 GB of 2.839: what stays bf16 is norms, embeddings, head, modulation tables


def test_fp8_trains_close_to_the_plain_run_and_resumes_exactly(tmp_path, shards, cache):
    plain, fp8, split = tmp_path / "plain", tmp_path / "fp8", tmp_path / "split"
    common = ("train.max_steps=4", "train.checkpoint_every=2", "optim.schedule=constant")
    assert run(tiny_cfg(plain, shards, cache, *common)) == 0
    assert run(tiny_cfg(fp8, shards, cache, *common, "train.base_storage=fp8")) == 0
    assert _losses(fp8) == pytest.approx(_losses(plain), rel=FP8_LOSS_RTOL)
    assert _losses(fp8) != _losses(plain)  # fp8 really changed the base
    sd = _adapter(fp8)
    assert sd.keys() == _adapter(plain).keys() and all(t.dtype == torch.float32 for t in sd.values())
    # Checkpoints hold the LoRA weights only (never the fp8 base), and a resume continues exactly.
    ck = load_file(fp8 / "checkpoints" / "step-000002" / "lora.safetensors")
    assert ck and all("lora_" in k and t.dtype == torch.float32 for k, t in ck.items())
    assert run(tiny_cfg(split, shards, cache, *common, "train.base_storage=fp8", "train.max_steps=2")) == 0
    assert run(tiny_cfg(split, shards, cache, *common, "train.base_storage=fp8", "train.resume=latest")) == 0
    assert _losses(split) == _losses(fp8)
    b = _adapter(split)
    assert all(torch.equal(sd[k], b[k]) for k in sd)


def test_fp8_adapter_loads_into_a_fresh_pipeline(tmp_path, shards, cache):
    from reelora.models.lora import DIFFUSERS_FILE
    from reelora.models.registry import load_model

    out = tmp_path / "fp8"
    assert run(tiny_cfg(out, shards, cache, *TWO_STEPS, "train.base_storage=fp8", "train.mixed_precision=bf16")) == 0
    sd = _adapter(out)
    spec, comps = load_model("tiny-wan")
    spec.pipeline(comps).load_lora_weights(str(out / "adapter"), weight_name=DIFFUSERS_FILE)
    layer = comps.transformer.blocks[1].ffn.net[2]
    assert torch.equal(layer.lora_B["default_0"].weight, sd["transformer.blocks.1.ffn.net.2.lora_B.weight"])
    assert sd["transformer.blocks.1.ffn.net.2.lora_B.weight"].abs().sum() > 0  # it trained


def test_checkpointed_fp8_blocks_are_fp8_again_after_backward(tmp_path, shards, cache):
    """After the recompute in backward every cast layer is back in fp8 (no upcast copy left to the next step)."""
    spec, comps, model, _, _ = _build(tmp_path, shards, cache, "train.base_storage=fp8", "train.gradient_checkpointing=true")
    _forward_backward(spec, comps, model)
    assert [n for n, m in _cast_layers(model).items() if m.weight.dtype != torch.float8_e4m3fn] == []


# ---------------------------------------------------------------------------------------------------------
# train.offload_blocks


def test_offload_is_exact(tmp_path, shards, cache):
    plain, off = tmp_path / "plain", tmp_path / "off"
    common = (*TWO_STEPS, "train.gradient_checkpointing=true")
    assert run(tiny_cfg(plain, shards, cache, *common)) == 0
    assert run(tiny_cfg(off, shards, cache, *common, "train.offload_blocks=1")) == 0
    assert _losses(off) == _losses(plain)
    a, b = _adapter(plain), _adapter(off)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("whole_block", [True, False])
def test_offload_moves_only_frozen_block_weights_once_per_forward_and_recompute(tmp_path, shards, cache, monkeypatch,
                                                                                 whole_block):
    from diffusers.hooks.group_offloading import ModuleGroup
    from torch.utils.checkpoint import checkpoint

    if not whole_block:  # torch's default: the recompute stops early, before the block's post-forward offload
        monkeypatch.setattr(memory, "checkpoint_whole_block", lambda f, *a, **k: checkpoint(f, *a, use_reentrant=False, **k))
    calls, built = [], {}

    def backward_done(group) -> bool:  # every LoRA weight of the group's blocks has its gradient
        blocks = [b for b in built.get("blocks", []) if b.blocks_group is group]
        return bool(blocks) and all(p.grad is not None for b in blocks for p in b.parameters() if p.requires_grad)

    for name in ("onload_", "offload_"):
        original = getattr(ModuleGroup, name)
        monkeypatch.setattr(ModuleGroup, name, lambda self, _f=original, _n=name: (calls.append((_n, self, backward_done(self))), _f(self))[1])
    spec, comps, model, _, params = _build(tmp_path, shards, cache, "train.offload_blocks=1", "train.gradient_checkpointing=true")
    groups = {id(h.group): h.group for m in model.blocks for h in [m._diffusers_hook.get_hook("group_offloading")]}
    for m in model.blocks:
        m.blocks_group = m._diffusers_hook.get_hook("group_offloading").group
    built["blocks"] = list(model.blocks)
    index = {id(g): i for i, g in enumerate(groups.values())}
    assert memory.offloaded_blocks(model) == 2 and len(groups) == 2  # one group per block
    offloaded = {id(t) for g in groups.values() for t in [*g.parameters, *g.buffers]}
    frozen_in_blocks = {id(p) for b in model.blocks for p in b.parameters() if not p.requires_grad}
    assert offloaded == frozen_in_blocks | {id(b) for blk in model.blocks for b in blk.buffers()}
    assert not offloaded & {id(p) for p in params}  # the LoRA weights never move
    assert all(not g.modules for g in groups.values())  # whole modules would drag their LoRA weights along
    calls.clear()
    _forward_backward(spec, comps, model)
    seen = [(name, index[id(g)]) for name, g, _ in calls]
    if whole_block:  # forward, then the recompute in backward (last block first): one onload and offload each,
        # offloaded only once that block's backward is done (autograd saved some of its weights themselves);
        # the first block's input needs no gradient: it stays onloaded until the next forward
        assert seen == [("onload_", 0), ("offload_", 0), ("onload_", 1), ("offload_", 1), ("onload_", 1), ("offload_", 1),
                        ("onload_", 0)]
        assert [done for name, _, done in calls[4:] if name == "offload_"] == [True]
    else:  # what checkpoint_whole_block prevents: on a GPU every block would stay onloaded after backward
        assert seen == [("onload_", 0), ("offload_", 0), ("onload_", 1), ("offload_", 1), ("onload_", 1), ("onload_", 0)]
    assert all(p.grad is not None for p in params)


def test_offload_groups_several_blocks(tmp_path, shards, cache):
    _, _, model, _, _ = _build(tmp_path, shards, cache, "train.offload_blocks=2", "train.gradient_checkpointing=true")
    hooks = [b._diffusers_hook.get_hook("group_offloading") for b in model.blocks]
    assert hooks[0].group is hooks[1].group and hooks[0].group.onload_leader is model.blocks[0]
    assert hooks[0].group.offload_leader is model.blocks[1]


def test_all_options_together_train(tmp_path, shards, cache):
    out = tmp_path / "all"
    assert run(tiny_cfg(out, shards, cache, *TWO_STEPS, "train.gradient_checkpointing=true", "train.base_storage=fp8",
                        "train.offload_blocks=1")) == 0
    fp8 = tmp_path / "fp8"
    assert run(tiny_cfg(fp8, shards, cache, *TWO_STEPS, "train.gradient_checkpointing=true", "train.base_storage=fp8")) == 0
    assert _losses(out) == _losses(fp8)  # offloading fp8 weights is as exact as offloading fp32 ones


# ---------------------------------------------------------------------------------------------------------
# train.compile_blocks


def test_compile_blocks_compiles_each_block(tmp_path, shards, cache):
    _, _, model, _, _ = _build(tmp_path, shards, cache, "train.compile_blocks=aot_eager")
    assert memory.compiled_blocks(model) == 2
    assert all(b._compiled_call_impl is not None for b in model.blocks)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tmp_path, shards, cache):
    from torch._dynamo.utils import counters

    plain, comp = tmp_path / "plain", tmp_path / "compiled"
    assert run(tiny_cfg(plain, shards, cache, *TWO_STEPS)) == 0
    torch._dynamo.reset()
    counters.clear()
    # aot_eager: dynamo + AOTAutograd (forward and backward graphs) without generating kernels, which on
    # 2 CPU cores takes ~2 min for inductor (inductor gave the same losses here, once, by hand).
    assert run(tiny_cfg(comp, shards, cache, *TWO_STEPS, "train.compile_blocks=aot_eager")) == 0
    assert counters["stats"]["unique_graphs"] >= 1 and counters["aot_autograd"]["total"] >= 1  # really compiled
    assert _losses(comp) == pytest.approx(_losses(plain), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Config: one field each, refused where they cannot work, free or warned on resume


@pytest.mark.parametrize("overrides, key", [
    (["train.offload_blocks=-1"], "train.offload_blocks"),
    (["train.offload_blocks=1"], "train.offload_blocks"),  # without gradient checkpointing: would save nothing
    (["train.base_storage=fp16"], "train.base_storage"),
    (["train.compile_blocks=yes"], "train.compile_blocks"),
    (["train.base_storage=fp8", "train.parallel=fsdp"], "train.base_storage"),
    (["train.offload_blocks=1", "train.gradient_checkpointing=true", "train.parallel=fsdp"], "train.offload_blocks"),
    (["train.compile_blocks=inductor", "train.parallel=fsdp"], "train.compile_blocks"),
    (["train.compile_blocks=aot_eager", "train.base_storage=fp8"], "train.compile_blocks"),
])
def test_refused_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ROOT / "configs" / "tiny-wan.yaml", overrides)


def test_offload_refuses_several_processes(tmp_path, shards, cache):
    cfg = tiny_cfg(tmp_path / "x", shards, cache, "train.offload_blocks=1", "train.gradient_checkpointing=true")
    spec, comps = load_backbone(cfg, CPU, cached=True)
    with pytest.raises(ConfigError, match="train.offload_blocks.*one process"):
        build_model_and_optimizer(cfg, spec, comps, SimpleNamespace(device=torch.device("cpu"), num_processes=2))


def test_resume_allows_offload_and_compile_changes_and_warns_on_fp8(tmp_path, shards, cache, capsys):
    before = tiny_cfg(tmp_path, shards, cache, "train.gradient_checkpointing=true")
    state = {"config": resume_config(before)}
    check_resume_config(tmp_path, state, tiny_cfg(tmp_path, shards, cache, "train.gradient_checkpointing=true",
                                                   "train.offload_blocks=1", "train.compile_blocks=inductor"))
    assert "warning" not in capsys.readouterr().err
    check_resume_config(tmp_path, state, tiny_cfg(tmp_path, shards, cache, "train.gradient_checkpointing=true",
                                                   "train.base_storage=fp8"))
    assert "train.base_storage ('auto' -> 'fp8')" in capsys.readouterr().err


@pytest.mark.slow
def test_fp8_trains_under_ddp(tmp_path, shards, cache):
    """DDP broadcasts the parameters when it wraps the model, and gloo has no fp8: the fp8 base is left out of it."""
    from tests.train.conftest import cfg_args, launch

    out = tmp_path / "ddp"
    r = launch(29641, str(ROOT / "train.py"), *cfg_args(out, shards, cache, *TWO_STEPS, "train.base_storage=fp8"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_losses(out)) == 2
    digests = json.loads((out / "logs" / "replicas.json").read_text())["digests"]
    assert len(digests) == 2 and len(set(digests)) == 1  # both ranks trained the same adapter


# ---------------------------------------------------------------------------------------------------------
# Two experts (Wan2.2-A14B)


def test_two_experts_take_every_memory_option_on_each_expert(tmp_path, shards):
    """fp8 storage, block offloading and compilation apply to both experts (the one a step does not run keeps its
    blocks offloaded), and a two-step run with fp8 + offloading trains both experts' LoRAs close to the plain run."""
    a14b = ("model=tiny-wan22-a14b", "train.gradient_checkpointing=true", "train.seed=4", "optim.warmup_steps=0")
    def build(*options):
        cfg = tiny_cfg(tmp_path / "unused", shards, None, *a14b, *options)
        spec, comps = load_backbone(cfg, CPU, cached=False)
        return build_model_and_optimizer(cfg, spec, comps, CPU)

    model, _, _, params = build("train.base_storage=fp8", "train.offload_blocks=1")
    blocks = len(model.transformer.blocks)
    assert len(model.transformer_2.blocks) == blocks
    one = len(_cast_layers(model.transformer))
    assert one > 0 and len(_cast_layers(model.transformer_2)) == one
    assert memory.offloaded_blocks(model.transformer) == memory.offloaded_blocks(model.transformer_2) == blocks
    assert all(p.dtype == torch.float32 for p in params) and len(params) == sum(
        1 for n, p in model.named_parameters() if "lora_" in n)
    model, _, _, _ = build("train.compile_blocks=aot_eager")
    assert memory.compiled_blocks(model.transformer) == memory.compiled_blocks(model.transformer_2) == blocks

    plain, small = tmp_path / "plain", tmp_path / "small"
    assert run(tiny_cfg(plain, shards, None, *a14b, *TWO_STEPS)) == 0
    assert run(tiny_cfg(small, shards, None, *a14b, *TWO_STEPS, "train.base_storage=fp8", "train.offload_blocks=1")) == 0
    assert _losses(small) == pytest.approx(_losses(plain), rel=FP8_LOSS_RTOL) and _losses(small) != _losses(plain)
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_low_noise.safetensors"):  # both trained
        sd = load_file(small / "adapter" / name)
        assert any(float(t.abs().max()) > 0 for k, t in sd.items() if "lora_B" in k), name
