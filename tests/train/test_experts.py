"""train/experts.py: each optimizer step of a two-expert backbone trains one expert on its own noise range."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reelora.models.registry import load_model
from reelora.train import experts
from reelora.train.config import ConfigError, load_config
from reelora.train.loop import with_family_defaults
from reelora.train.step import sample_sigmas

ROOT = Path(__file__).parents[2]
A14B = "tiny-wan22-a14b"


def cfg_for(*overrides):
    return with_family_defaults(load_config(ROOT / "configs" / "tiny-wan.yaml", [f"model={A14B}", *overrides]))


@pytest.fixture(scope="module")
def a14b():
    return load_model(A14B, components=("tokenizer",))  # the boundary is known without building the experts


def test_cdf_is_the_training_distribution():
    """cdf(s) = P(sigma < s) for the shifted logit-normal and the uniform sampling."""
    for overrides in ((), ("train.timestep_sampling=uniform", "train.flow_shift=5.0")):
        cfg = cfg_for(*overrides)
        drawn = sample_sigmas(200_000, torch.Generator().manual_seed(0), cfg.train)
        for s in (0.2, 0.5, 0.875, 0.95):
            assert experts.cdf(s, cfg.train) == pytest.approx(float((drawn < s).double().mean()), abs=4e-3)
    assert experts.cdf(0.0, cfg.train) == 0.0 and experts.cdf(1.0, cfg.train) == 1.0


def test_sigmas_stay_on_their_side_of_the_boundary(a14b):
    """Drawn inside the expert's range, with the training distribution's shape there (its conditional quantiles)."""
    spec, comps = a14b
    cfg = cfg_for()
    b = spec.boundary(comps)
    assert b == 0.875
    g = torch.Generator().manual_seed(1)
    high = experts.sample_sigmas_in(50_000, g, cfg.train, b, 1.0)
    low = experts.sample_sigmas_in(50_000, g, cfg.train, 0.0, b)
    assert bool((high >= b).all()) and bool((high <= 1.0).all())
    assert bool((low < b).all()) and bool((low >= 0.0).all())
    full = sample_sigmas(200_000, torch.Generator().manual_seed(2), cfg.train)
    assert float(low.median()) == pytest.approx(float(full[full < b].median()), abs=5e-3)
    assert float(high.median()) == pytest.approx(float(full[full >= b].median()), abs=5e-3)
    # the boundary itself rounds down to the largest float32 below it for the low expert, never across
    edge = experts.sample_sigmas_in(8, torch.Generator().manual_seed(3), cfg.train, b - 1e-12, b)
    assert bool((edge < b).all())


def test_one_expert_per_step_with_the_distribution_odds(a14b):
    spec, comps = a14b
    cfg = cfg_for()
    spans = [experts.sigma_range(spec, comps, cfg, step) for step in range(1, 4001)]
    assert set(spans) == {(0.875, 1.0), (0.0, 0.875)}
    share_high = sum(s == (0.875, 1.0) for s in spans) / len(spans)
    assert share_high == pytest.approx(1.0 - experts.cdf(0.875, cfg.train), abs=0.02)
    assert spans == [experts.sigma_range(spec, comps, cfg, step) for step in range(1, 4001)]  # no rank, no state
    assert {experts.sigma_range(spec, comps, cfg_for("lora.experts=high"), s) for s in range(1, 50)} == {(0.875, 1.0)}
    assert {experts.sigma_range(spec, comps, cfg_for("lora.experts=low"), s) for s in range(1, 50)} == {(0.0, 0.875)}


def test_expert_choice_and_refusals():
    from reelora.models.registry import family_spec

    a14b = family_spec("wan22-a14b")
    assert experts.trained(a14b, cfg_for()) == ("transformer", "transformer_2")
    assert experts.trained(a14b, cfg_for("lora.experts=low")) == ("transformer_2",)
    wan = load_config(ROOT / "configs" / "tiny-wan.yaml", ["lora.experts=high"])
    with pytest.raises(ConfigError, match="lora.experts.*one transformer"):
        experts.trained(family_spec("wan"), wan)
    with pytest.raises(ConfigError, match="lora.experts"):
        load_config(ROOT / "configs" / "tiny-wan.yaml", ["lora.experts=middle"])
    assert experts.ddp_kwargs(cfg_for())[0].find_unused_parameters
    assert experts.ddp_kwargs(cfg_for("lora.experts=high")) == []
    assert experts.ddp_kwargs(load_config(ROOT / "configs" / "tiny-wan.yaml")) == []


def test_a_step_trains_only_its_expert(a14b):
    """Through the training wrapper: the other expert's LoRA gets no gradient at all (AdamW leaves it alone)."""
    from reelora.models.lora import attach_lora
    from reelora.models.registry import family_spec

    spec, comps = load_model(A14B, components=("transformer",))
    model = experts.training_module(spec, comps, cfg_for())
    for m in experts.adapted_modules(model):
        attach_lora(m, rank=2, alpha=2.0, target_modules=list(spec.lora_targets))
    latents, noise = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 16, 2, 4, 4)
    text = {"prompt_embeds": torch.randn(1, 8, 32)}
    pred, target = spec.forward(comps, model, latents, noise, torch.tensor([0.3]), text)
    (pred - target).pow(2).mean().backward()
    grads = {e: [p.grad for n, p in getattr(model, e).named_parameters() if "lora_A" in n] for e in model.adapted}
    assert all(g is not None for g in grads["transformer_2"]) and all(g is None for g in grads["transformer"])
    with pytest.raises(ValueError, match="straddle"):
        spec.forward(comps, model, latents.repeat(2, 1, 1, 1, 1), noise.repeat(2, 1, 1, 1, 1), torch.tensor([0.3, 0.9]),
                     {"prompt_embeds": text["prompt_embeds"].repeat(2, 1, 1)})
    assert family_spec("wan22-a14b") is spec
