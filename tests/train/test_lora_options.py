"""lora.use_rslora and lora.use_dora on tiny-wan: the peft layers are built as asked, they change the training,
the exported adapter reloads through diffusers to the trained model's output, and resume is exact."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from reelora.models.lora import DIFFUSERS_FILE
from reelora.train import checkpoint
from reelora.train.loop import run
from tests.train.conftest import tiny_cfg

STEPS = ("train.max_steps=4", "train.checkpoint_every=2", "optim.schedule=cosine", "optim.warmup_steps=1")
OPTIONS = {"rslora": "lora.use_rslora=true", "dora": "lora.use_dora=true"}


def _losses(out):
    return [json.loads(l)["train/loss"] for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def plain_losses(tmp_path_factory, shards, cache):
    out = tmp_path_factory.mktemp("plain") / "run"
    assert run(tiny_cfg(out, shards, cache, *STEPS)) == 0
    return _losses(out)


def _capture_model(monkeypatch) -> dict:
    """Record the transformer the loop trains (the spec's forward sees it)."""
    from reelora.models.wan import WanSpec

    seen, real = {}, WanSpec.forward

    def forward(self, comps, transformer, *args):
        seen.setdefault("model", transformer)
        return real(self, comps, transformer, *args)

    monkeypatch.setattr(WanSpec, "forward", forward)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_lora_option_trains_exports_and_resumes(option, tmp_path, shards, cache, plain_losses, monkeypatch):
    from reelora.models import adapters
    from reelora.models.lora import lora_state_dict
    from reelora.models.registry import load_model

    cfg = tiny_cfg(tmp_path / "straight", shards, cache, *STEPS, OPTIONS[option])
    rank, alpha = cfg.lora.rank, cfg.lora.alpha
    seen = _capture_model(monkeypatch)
    assert run(cfg) == 0
    model = seen["model"]
    layer = model.blocks[0].attn1.to_q
    magnitudes = {n: p for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    if option == "rslora":
        assert layer.scaling["default"] == pytest.approx(alpha / math.sqrt(rank)) != alpha / rank
        assert not magnitudes
    else:
        assert layer.scaling["default"] == alpha / rank and layer.use_dora["default"]
        # one trainable magnitude per output feature of each adapted layer, and training moved them
        assert len(magnitudes) == sum(1 for n, _ in model.named_parameters() if "lora_A" in n) > 0
        assert all(p.requires_grad and p.dtype == torch.float32 for p in magnitudes.values())
        assert magnitudes["blocks.0.attn1.to_q.lora_magnitude_vector.default.weight"].shape == (layer.out_features,)
        w = layer.base_layer.weight.float()
        assert not torch.allclose(layer.lora_magnitude_vector["default"].weight, w.norm(dim=1))  # init: row norms

    # It changes the maths: the first loss is the same (the adapter starts as a no-op), the later ones are not.
    losses = _losses(tmp_path / "straight")
    assert losses[0] == plain_losses[0] and all(a != b for a, b in zip(losses[1:], plain_losses[1:]))

    # The checkpoint and the exported adapter hold every trained tensor, magnitudes included.
    trained = lora_state_dict(model)
    _same(trained, load_file(checkpoint.latest(tmp_path / "straight") / "lora.safetensors"))
    exported = load_file(tmp_path / "straight" / "adapter" / DIFFUSERS_FILE)
    _same({f"transformer.{k}": v for k, v in trained.items()}, exported)
    with safe_open(str(tmp_path / "straight" / "adapter" / DIFFUSERS_FILE), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.use_dora"] is (option == "dora")
    assert meta.get("transformer.use_rslora", False) is (option == "rslora")
    comfy = tmp_path / "straight" / "adapter" / "comfyui_lora.safetensors"
    if option == "rslora":  # ComfyUI scales by alpha / rank: the file's alpha gives the trained alpha / sqrt(rank)
        assert load_file(comfy)["diffusion_model.blocks.0.self_attn.q.alpha"].item() / rank == pytest.approx(alpha / math.sqrt(rank))
    else:  # ComfyUI's dora_scale is not peft's magnitude: no file rather than a wrong one
        assert not comfy.exists()
        assert "DoRA" in (tmp_path / "straight" / "adapter" / "README.md").read_text()

    # A fresh pipeline loads the exported file (our reader, then diffusers' loader) and computes what training did.
    spec, comps = load_model("tiny-wan")
    pipe = spec.pipeline(comps)
    adapters.attach(pipe, [adapters.read_adapter(tmp_path / "straight" / "adapter")])
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 16, 3, 8, 8, generator=g)
    text = {"prompt_embeds": torch.randn(1, 64, 32, generator=g)}
    noise, sigmas = torch.randn(lat.shape, generator=g), torch.tensor([0.6])
    model.eval()
    with torch.no_grad():
        expected = spec.forward(comps, model, lat, noise, sigmas, text)[0]
        base = spec.forward(comps, load_model("tiny-wan", components=("transformer",))[1].transformer,
                            lat, noise, sigmas, text)[0]
        loaded = spec.forward(comps, comps.transformer, lat, noise, sigmas, text)[0]
    assert (expected - base).abs().max() > 1e-4  # the adapter does something ...
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-6)  # ... and the reloaded one the same

    # Resume: 2 steps, then resume to 4 == 4 straight, bitwise.
    split = tmp_path / "split"
    assert run(tiny_cfg(split, shards, cache, *STEPS, OPTIONS[option], "train.max_steps=2")) == 0
    assert run(tiny_cfg(split, shards, cache, *STEPS, OPTIONS[option], "train.resume=latest")) == 0
    _same(load_file(tmp_path / "straight" / "adapter" / DIFFUSERS_FILE), load_file(split / "adapter" / DIFFUSERS_FILE))
    assert _losses(split)[2:] == losses[2:]


def test_changing_a_lora_option_on_resume_is_refused(tmp_path, shards, cache):
    from reelora.train.config import ConfigError
    from reelora.train.loop import resolve_resume

    out = tmp_path / "run"
    assert run(tiny_cfg(out, shards, cache, "train.max_steps=1", "train.checkpoint_every=1")) == 0
    for option in OPTIONS.values():
        with pytest.raises(ConfigError, match=option.split("=")[0].replace(".", r"\.")):
            resolve_resume(tiny_cfg(out, shards, cache, "train.resume=latest", option))
    # A checkpoint written before these options existed ran without them: it resumes, and not with them.
    ck = checkpoint.latest(out)
    state = json.loads((ck / "state.json").read_text())
    for key in ("lora.use_rslora", "lora.use_dora"):
        del state["config"][key]
    (ck / "state.json").write_text(json.dumps(state))
    assert resolve_resume(tiny_cfg(out, shards, cache, "train.resume=latest")) == ck
    with pytest.raises(ConfigError, match="lora.use_dora"):
        resolve_resume(tiny_cfg(out, shards, cache, "train.resume=latest", OPTIONS["dora"]))


def test_dora_with_an_fp8_base_is_refused_naming_both_keys():
    from reelora.train.config import ConfigError, load_config

    load_config(None, ["lora.use_dora=true", "lora.use_rslora=true"])  # each other and the defaults: fine
    with pytest.raises(ConfigError, match="'lora.use_dora'.*base_storage=fp8"):
        load_config(None, ["lora.use_dora=true", "train.base_storage=fp8"])
