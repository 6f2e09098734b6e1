"""models/lora.py: attach by names or regex, export that the real WanPipeline loads with the right scaling,
ComfyUI keys under the original Wan module names."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from reelora.models.lora import DIFFUSERS_FILE, attach_lora, lora_state_dict, read_lineage, save_adapter
from reelora.models.wan import COMFYUI_FILE
from reelora.models.wan import original_name as wan_original_name
from reelora.models.registry import load_model


@pytest.fixture(scope="module")
def wan():
    return load_model("tiny-wan")


def _fresh_transformer():
    return load_model("tiny-wan", components=("transformer",))[1].transformer


def _inputs(spec, comps):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 16, 3, 8, 8, generator=g)
    text = {"prompt_embeds": torch.randn(1, 64, 32, generator=g)}
    return lat, torch.randn(lat.shape, generator=g), torch.tensor([0.6]), text


def test_attach_by_names_and_regex_and_reject_no_match():
    t = _fresh_transformer()
    attach_lora(t, rank=2, alpha=2, target_modules=["to_q", "ffn.net.2"], seed=0)
    names = {n for n, p in t.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    assert any("attn1.to_q.lora_A" in n for n in names) and any("ffn.net.2.lora_B" in n for n in names)
    assert not any("to_k" in n for n in names)
    assert all(not p.requires_grad for n, p in t.named_parameters() if "lora_" not in n)

    t = _fresh_transformer()
    attach_lora(t, rank=2, alpha=2, target_modules=r"blocks\.0\.attn1\.to_(q|v)", seed=0)
    mods = {n.split(".lora_")[0] for n, p in t.named_parameters() if p.requires_grad}
    assert mods == {"blocks.0.attn1.to_q", "blocks.0.attn1.to_v"}

    with pytest.raises(ValueError, match="matched no module"):
        attach_lora(_fresh_transformer(), rank=2, alpha=2, target_modules=["nonexistent_proj"])


def test_attach_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = _fresh_transformer(), _fresh_transformer()
    attach_lora(a, rank=2, alpha=2, target_modules=["to_q"], init="gaussian", seed=7)
    attach_lora(b, rank=2, alpha=2, target_modules=["to_q"], init="gaussian", seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb = lora_state_dict(a), lora_state_dict(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(sa[k].abs().sum() > 0 for k in sa if "lora_A" in k)
    assert all(sa[k].abs().sum() == 0 for k in sa if "lora_B" in k)  # B starts at zero: a no-op adapter


def _randomize_b(transformer, seed):
    """Make B non-zero, as after training (at init the adapter is an exact no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in transformer.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_diffusers_export_loads_in_wan_pipeline_with_alpha_over_rank_scaling(wan, tmp_path):
    spec, comps = wan
    rank, alpha = 4, 8.0  # scale 2: a loader that ignored the metadata would use 1
    ours = _fresh_transformer()
    attach_lora(ours, rank=rank, alpha=alpha, target_modules=list(spec.lora_targets), init="gaussian", seed=3)
    _randomize_b(ours, 3)
    lat, noise, s, text = _inputs(spec, comps)
    with torch.no_grad():
        expected = spec.forward(comps, ours, lat, noise, s, text)[0]
        base = spec.forward(comps, comps.transformer, lat, noise, s, text)[0]
    paths = save_adapter(tmp_path, lora_state_dict(ours), rank=rank, alpha=alpha, target_modules=list(spec.lora_targets),
                         family="wan", lineage={"base_model": "tiny-wan", "titles": ["a", "b"], "step": 3})
    assert paths["diffusers"].name == DIFFUSERS_FILE
    keys = list(load_file(paths["diffusers"]))
    assert keys and all(k.startswith("transformer.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys)

    pipe = spec.pipeline(comps)
    pipe.load_lora_weights(str(tmp_path), weight_name=DIFFUSERS_FILE)
    layer = comps.transformer.blocks[0].attn1.to_q
    assert list(layer.scaling.values()) == [alpha / rank]
    with torch.no_grad():
        loaded = spec.forward(comps, comps.transformer, lat, noise, s, text)[0]
    assert (loaded - base).abs().max() > 1e-3  # the adapter changes the output ...
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5)  # ... exactly as in training
    pipe.unload_lora_weights()

    lineage = read_lineage(paths["diffusers"])
    assert lineage["base_model"] == "tiny-wan" and lineage["titles"] == ["a", "b"] and lineage["step"] == 3
    card = paths["card"].read_text()
    assert "tiny-wan" in card and "8.0" in card


def test_comfyui_names_are_original_wan_names(wan, tmp_path):
    # Original Wan2.1 names (wan/modules/model.py): self_attn/cross_attn q,k,v,o; ffn.0/ffn.2; head.head.
    assert wan_original_name("blocks.0.attn1.to_q") == "blocks.0.self_attn.q"
    assert wan_original_name("blocks.12.attn1.to_out.0") == "blocks.12.self_attn.o"
    assert wan_original_name("blocks.3.attn2.to_k") == "blocks.3.cross_attn.k"
    assert wan_original_name("blocks.3.attn2.add_k_proj") == "blocks.3.cross_attn.k_img"
    assert wan_original_name("blocks.1.ffn.net.0.proj") == "blocks.1.ffn.0"
    assert wan_original_name("blocks.1.ffn.net.2") == "blocks.1.ffn.2"
    assert wan_original_name("proj_out") == "head.head"
    assert wan_original_name("condition_embedder.time_proj") == "time_projection.1"
    with pytest.raises(KeyError):
        wan_original_name("blocks.0.norm2")

    spec, comps = wan
    rank, alpha = 4, 8.0
    ours = _fresh_transformer()
    attach_lora(ours, rank=rank, alpha=alpha, target_modules=list(spec.lora_targets), init="gaussian", seed=5)
    _randomize_b(ours, 5)
    save_adapter(tmp_path, lora_state_dict(ours), rank=rank, alpha=alpha, target_modules=list(spec.lora_targets),
                 family="wan", lineage={"base_model": "tiny-wan"})
    comfy = load_file(tmp_path / COMFYUI_FILE)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in comfy
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in comfy
    assert comfy["diffusion_model.blocks.0.cross_attn.v.alpha"].item() == alpha
    assert all(k.startswith("diffusion_model.blocks.") for k in comfy)
    # diffusers' own converter for original-format Wan LoRAs reads it back to the same function.
    lat, noise, s, text = _inputs(spec, comps)
    with torch.no_grad():
        expected = spec.forward(comps, ours, lat, noise, s, text)[0]
    pipe = spec.pipeline(comps)
    pipe.load_lora_weights(str(tmp_path), weight_name=COMFYUI_FILE)
    with torch.no_grad():
        loaded = spec.forward(comps, comps.transformer, lat, noise, s, text)[0]
    pipe.unload_lora_weights()
    torch.testing.assert_close(loaded, expected, rtol=1e-4, atol=1e-5)
    with safe_open(str(tmp_path / COMFYUI_FILE), "pt") as f:
        assert f.metadata()["reelora.base_model"] == '"tiny-wan"'


def test_config_offers_exactly_the_inits_lora_supports():
    import typing

    from reelora.models.lora import INITS
    from reelora.train.config import LoraConfig

    assert set(typing.get_args(typing.get_type_hints(LoraConfig)["init"])) == set(INITS)


def _trained_like(spec, rank, alpha, seed, **options):
    t = _fresh_transformer()
    attach_lora(t, rank=rank, alpha=alpha, target_modules=list(spec.lora_targets), init="gaussian", seed=seed, **options)
    _randomize_b(t, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in t.named_parameters():
            if "lora_magnitude_vector" in n:  # trained magnitudes are not the base's row norms any more
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return t


def test_rslora_export_scales_by_alpha_over_sqrt_rank_in_diffusers_and_comfyui_files(wan, tmp_path):
    spec, comps = wan
    rank, alpha = 4, 8.0  # rsLoRA scale 4, plain scale 2
    ours = _trained_like(spec, rank, alpha, 7, use_rslora=True)
    assert ours.blocks[0].attn1.to_q.scaling["default"] == 4.0
    lat, noise, s, text = _inputs(spec, comps)
    with torch.no_grad():
        expected = spec.forward(comps, ours, lat, noise, s, text)[0]
    save_adapter(tmp_path, lora_state_dict(ours), rank=rank, alpha=alpha, target_modules=list(spec.lora_targets),
                 family="wan", lineage={"base_model": "tiny-wan"}, use_rslora=True)
    assert "scale 4, rsLoRA" in (tmp_path / "README.md").read_text()
    # ComfyUI divides the per-module alpha by the rank: alpha * sqrt(rank) / rank == alpha / sqrt(rank)
    assert load_file(tmp_path / COMFYUI_FILE)["diffusion_model.blocks.0.self_attn.q.alpha"].item() == 16.0
    pipe = spec.pipeline(comps)
    for name in (DIFFUSERS_FILE, COMFYUI_FILE):  # diffusers' loader honours use_rslora; its ComfyUI converter the alpha
        pipe.load_lora_weights(str(tmp_path), weight_name=name)
        with torch.no_grad():
            loaded = spec.forward(comps, comps.transformer, lat, noise, s, text)[0]
        pipe.unload_lora_weights()
        torch.testing.assert_close(loaded, expected, rtol=1e-4, atol=1e-5, msg=name)


def test_dora_export_is_diffusers_only_and_refuses_magnitudes_without_use_dora(wan, tmp_path):
    import json

    from safetensors.torch import save_file

    from reelora.models import adapters

    spec, comps = wan
    ours = _trained_like(spec, 4, 4.0, 9, use_dora=True)
    sd = lora_state_dict(ours)
    assert sum(k.endswith(".lora_magnitude_vector") for k in sd) == sum(k.endswith("lora_A.weight") for k in sd)
    paths = save_adapter(tmp_path, sd, rank=4, alpha=4.0, target_modules=list(spec.lora_targets), family="wan",
                         lineage={"base_model": "tiny-wan"}, use_dora=True)
    assert set(paths) == {"diffusers", "card"} and not (tmp_path / COMFYUI_FILE).exists()
    lat, noise, s, text = _inputs(spec, comps)
    with torch.no_grad():
        expected = spec.forward(comps, ours, lat, noise, s, text)[0]
    pipe = spec.pipeline(comps)
    names = adapters.attach(pipe, [adapters.read_adapter(tmp_path)])
    with torch.no_grad():
        loaded = spec.forward(comps, comps.transformer, lat, noise, s, text)[0]
    pipe.delete_adapters(names)
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-6)

    # Mixed at another scale, peft would scale the direction but not the magnitudes (scale 0 != the base): refused.
    with pytest.raises(adapters.AdapterError, match="DoRA adapter .* scale 1 only, got 0.5"):
        adapters.read_adapter(tmp_path, scale=0.5)

    # The same tensors with metadata that says plain LoRA: diffusers would drop the magnitudes; we refuse.
    with safe_open(str(paths["diffusers"]), "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["lora_adapter_metadata"])
    cfg["transformer.use_dora"] = False
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(paths["diffusers"]), bad, {**meta, "lora_adapter_metadata": json.dumps(cfg)})
    with pytest.raises(adapters.AdapterError, match="lora_magnitude_vector.*use_dora=False"):
        adapters.read_adapter(bad)
    # A magnitude of the wrong length does not fit the layer.
    tensors = load_file(paths["diffusers"])
    tensors["transformer.blocks.0.attn1.to_q.lora_magnitude_vector"] = torch.ones(3)
    save_file(tensors, bad, meta)
    with pytest.raises(adapters.AdapterError, match="to_q.*lora_magnitude_vector.*expected"):
        adapters.validate(adapters.read_adapter(bad), _fresh_transformer())
