"""Wan2.2 families: selection from model_index.json, the tiny flavours, and the two experts at sampling time
(each expert runs on its side of the boundary with its own adapter; scale 0 is the base)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reelora.models.registry import load_model, resolve

A14B = "tiny-wan22-a14b"


def write_index(folder, **entries) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", **entries}))
    return str(folder)


def test_family_from_model_index(tmp_path):
    """The three WanPipeline checkpoints, as their published model_index.json tell them apart."""
    wan21 = write_index(tmp_path / "21", transformer=["diffusers", "WanTransformer3DModel"])
    ti2v = write_index(tmp_path / "5b", expand_timesteps=True, boundary_ratio=None, transformer_2=[None, None],
                       transformer=["diffusers", "WanTransformer3DModel"])
    a14b = write_index(tmp_path / "a14b", expand_timesteps=False, boundary_ratio=0.875,
                       transformer=["diffusers", "WanTransformer3DModel"], transformer_2=["diffusers", "WanTransformer3DModel"])
    assert [resolve(p).family for p in (wan21, ti2v, a14b)] == ["wan", "wan22-5b", "wan22-a14b"]
    assert resolve("tiny-wan22-5b").family == "wan22-5b" and resolve(A14B).family == "wan22-a14b"


@pytest.mark.parametrize("name, channels, spatial", [("tiny-wan22-5b", 48, 16), (A14B, 16, 4)])
def test_models_show(name, channels, spatial, capsys):
    """`reelora models show` for each tiny flavour: both experts listed for A14B, LoRA targets hit in each."""
    from reelora.cli import main

    assert main(["models", "show", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == name.removeprefix("tiny-") and info["pipeline"] == "WanPipeline"
    experts = [c for c in ("transformer", "transformer_2") if c in info["components"]]
    assert experts == (["transformer", "transformer_2"] if name == A14B else ["transformer"])
    assert info["lora_target_modules"] == 20 * len(experts)  # 2 blocks x (attn1 + attn2 q,k,v,o + ffn in/out)
    spec, comps = load_model(name, components=("vae", "transformer"))
    assert comps.vae.config.z_dim == comps.transformer.config.in_channels == channels
    assert comps.vae.config.scale_factor_spatial == spatial


def test_saved_a14b_loads_both_experts_and_its_boundary(tmp_path):
    spec, comps = load_model(A14B, components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"))
    pipe = spec.pipeline(comps)
    pipe.register_to_config(boundary_ratio=0.9)  # a saved model's own boundary wins over the family default
    pipe.save_pretrained(tmp_path / "m")
    spec2, loaded = load_model(str(tmp_path / "m"), components=("transformer", "scheduler"))
    assert spec2.family == "wan22-a14b" and loaded.extra["boundary_ratio"] == 0.9
    for part in ("transformer", "transformer_2"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(comps, part).state_dict().values(),
                                                     getattr(loaded, part).state_dict().values()))
    assert not torch.equal(comps.transformer.proj_out.weight, comps.transformer_2.proj_out.weight)  # two experts


# ---------------------------------------------------------------------------------------------------------
# Sampling with the two experts


@pytest.fixture(scope="module")
def expert_adapter(tmp_path_factory):
    """A two-expert adapter as training writes it (save_adapter), with random non-zero lora_B per expert."""
    from tests.models.conftest import write_expert_adapter

    out = tmp_path_factory.mktemp("a14b-adapter")
    return out, write_expert_adapter(out)


def test_adapter_has_one_file_per_expert_in_each_format(expert_adapter):
    from safetensors import safe_open

    from reelora.models.adapters import read_adapter

    out, paths = expert_adapter
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "comfyui_lora_high_noise.safetensors", "comfyui_lora_low_noise.safetensors",
                     "pytorch_lora_weights.safetensors", "pytorch_lora_weights_low_noise.safetensors"]
    for f, expert in (("pytorch_lora_weights.safetensors", "transformer"), ("pytorch_lora_weights_low_noise.safetensors", "transformer_2"),
                      ("comfyui_lora_low_noise.safetensors", "transformer_2")):
        with safe_open(str(out / f), framework="pt") as fh:
            assert json.loads(fh.metadata()["reelora.expert"]) == expert
    # diffusers' key layout in each (transformer.*), the original Wan names in each ComfyUI file
    hi, lo = read_adapter(out / "pytorch_lora_weights.safetensors"), read_adapter(out / "pytorch_lora_weights_low_noise.safetensors")
    assert set(hi.state_dict) == set(lo.state_dict) and len(hi.state_dict) == 40
    assert not torch.equal(hi.state_dict["transformer.blocks.0.attn1.to_q.lora_B.weight"],
                           lo.state_dict["transformer.blocks.0.attn1.to_q.lora_B.weight"])
    card = (out / "README.md").read_text()
    assert "load_into_transformer_2=True" in card and "comfyui_lora_low_noise.safetensors" in card


def _calls(pipe):
    """Hooks recording (expert, timestep) of every denoiser forward."""
    calls = []
    for name in ("transformer", "transformer_2"):
        getattr(pipe, name).register_forward_pre_hook(
            lambda m, a, kw, name=name: calls.append((name, float(kw["timestep"].flatten()[0]))), with_kwargs=True)
    return calls


def test_sampling_routes_experts_by_timestep_with_their_own_adapters(expert_adapter):
    """Expert 1 (transformer) above the boundary, expert 2 below (CFG: two forwards per step); each holds the
    weights of its own file; scale 0 gives the base frames exactly, scale 1 others."""
    from safetensors.torch import load_file

    from reelora.models.sample import Sampler

    out, _ = expert_adapter
    base = Sampler(A14B, progress=False)
    calls = _calls(base.pipe)
    clip = base.generate("a fox", seed=1, steps=2, num_frames=5)
    boundary = base.pipe.config.boundary_ratio * base.pipe.scheduler.config.num_train_timesteps
    assert boundary == 875.0
    timesteps = [float(t) for t in base.pipe.scheduler.timesteps]
    expected = [("transformer" if t >= boundary else "transformer_2", t) for t in timesteps for _ in (0, 1)]
    assert calls == expected
    assert {c for c, _ in calls} == {"transformer", "transformer_2"}  # 2 steps: t = 999 (high), 750 (low)

    zero = Sampler(A14B, loras=[f"{out}:0"], progress=False)
    assert [(a.path.name, a.component) for a in zero.adapters] == [
        ("pytorch_lora_weights.safetensors", "transformer"), ("pytorch_lora_weights_low_noise.safetensors", "transformer_2")]
    assert np.array_equal(zero.generate("a fox", seed=1, steps=2, num_frames=5).frames, clip.frames)

    one = Sampler(A14B, loras=[str(out)], progress=False)
    styled = one.generate("a fox", seed=1, steps=2, num_frames=5).frames
    assert not np.array_equal(styled, clip.frames)
    fused = Sampler(A14B, loras=[str(out)], fuse=True, progress=False)  # each expert fuses its own adapter
    assert not any(getattr(fused.pipe, c).peft_config for c in ("transformer", "transformer_2") if hasattr(getattr(fused.pipe, c), "peft_config"))
    assert np.abs(fused.generate("a fox", seed=1, steps=2, num_frames=5).frames.astype(int) - styled).max() <= 2
    for component, f in (("transformer", "pytorch_lora_weights.safetensors"), ("transformer_2", "pytorch_lora_weights_low_noise.safetensors")):
        want = load_file(str(out / f))["transformer.blocks.1.ffn.net.2.lora_B.weight"]
        layer = getattr(one.pipe, component).blocks[1].ffn.net[2]
        [name] = layer.lora_B.keys()
        assert torch.equal(layer.lora_B[name].weight, want)


def test_a_single_expert_file_goes_to_its_expert(expert_adapter, tmp_path):
    """One file passed alone: the recorded expert, else the file name (ComfyUI's *_low_noise), else transformer."""
    import shutil

    from reelora.models.adapters import read_adapters

    out, _ = expert_adapter
    assert [a.component for a in read_adapters(out / "pytorch_lora_weights_low_noise.safetensors", 1.0, "wan22-a14b")] == ["transformer_2"]
    assert [a.component for a in read_adapters(out / "comfyui_lora_high_noise.safetensors", 1.0, "wan22-a14b")] == ["transformer"]
    from safetensors.torch import load_file, save_file

    foreign = tmp_path / "style_LOW-noise.safetensors"  # a file from elsewhere: no lineage, the name tells
    save_file(load_file(str(out / "comfyui_lora_low_noise.safetensors")), str(foreign))
    assert [a.component for a in read_adapters(foreign, 1.0, "wan22-a14b")] == ["transformer_2"]
    plain = tmp_path / "style.safetensors"
    shutil.copy(foreign, plain)
    assert [a.component for a in read_adapters(plain, 1.0, "wan22-a14b")] == ["transformer"]
    assert [a.component for a in read_adapters(plain, 1.0, "wan")] == ["transformer"]  # one-transformer family


def test_one_trained_expert_writes_its_files_only(tmp_path):
    """lora.experts=low: no pytorch_lora_weights.safetensors (which diffusers would load into the high-noise
    expert); the folder reads back as the low-noise expert's adapter."""
    from reelora.models.adapters import read_adapters
    from reelora.models.lora import attach_lora, lora_state_dict, save_adapter
    from reelora.models.wan22 import Experts

    spec, comps = load_model(A14B, components=("transformer",))
    low = Experts(comps.transformer, comps.transformer_2, adapted=("transformer_2",))
    attach_lora(low.transformer_2, rank=2, alpha=2.0, target_modules=list(spec.lora_targets))
    sd = lora_state_dict(low)
    assert sd and all(k.startswith("transformer_2.") for k in sd)
    save_adapter(tmp_path, sd, rank=2, alpha=2.0, target_modules=list(spec.lora_targets), family="wan22-a14b")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md", "comfyui_lora_low_noise.safetensors", "pytorch_lora_weights_low_noise.safetensors"]
    assert [a.component for a in read_adapters(tmp_path, 1.0, "wan22-a14b")] == ["transformer_2"]


def test_switching_an_expert_adapter_moves_both_experts_together(expert_adapter):
    """A two-expert adapter folder attached to a loaded backbone is one name with one Adapter per expert: switched
    on, the frames of a Sampler built with it; a low-noise file alone leaves the high-noise expert at its base;
    none, the base; bit for bit each."""
    from reelora.models.sample import Sampler

    out, _ = expert_adapter
    low = out / "pytorch_lora_weights_low_noise.safetensors"

    def run(sampler):
        return sampler.generate("a fox", seed=1, steps=2, num_frames=5).frames

    base, styled, low_only = (run(Sampler(A14B, loras, progress=False)) for loras in ([], [str(out)], [str(low)]))
    s = Sampler(A14B, progress=False)
    assert [a.component for a in s.add_adapter("style", out)] == ["transformer", "transformer_2"]
    s.add_adapter("low", low)
    s.use_adapters({"style": 1.0})
    assert np.array_equal(run(s), styled)
    assert [(a.path.name, a.component) for a in s.adapters] == [
        ("pytorch_lora_weights.safetensors", "transformer"), ("pytorch_lora_weights_low_noise.safetensors", "transformer_2")]
    s.use_adapters({"low": 1.0})
    assert np.array_equal(run(s), low_only) and not np.array_equal(low_only, styled) and not np.array_equal(low_only, base)
    s.use_adapters({})
    assert np.array_equal(run(s), base)
