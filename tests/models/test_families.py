"""Every registered family declares what it knows about itself; nothing outside the family module does."""
from __future__ import annotations

import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from reelora.models.registry import FAMILIES, family_spec, is_tiny, sample_defaults
from reelora.models.settings import SampleSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_declares_its_sampling_defaults(family):
    spec = FAMILIES[family]
    for defaults in (spec.sample_defaults, spec.tiny_sample_defaults):
        assert isinstance(defaults, SampleSettings)
        unset = [f.name for f in fields(SampleSettings) if getattr(defaults, f.name) is None and f.name != "negative_prompt"]
        assert unset == [], f"{family}: no default for {unset}"
        assert defaults.height % spec.size_multiple == 0 and defaults.width % spec.size_multiple == 0
    assert sample_defaults(f"tiny-{family}", spec) is spec.tiny_sample_defaults
    assert sample_defaults("some/local-dir", spec) is spec.sample_defaults


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_declares_pipeline_shift_and_exports(family):
    spec = family_spec(family)
    assert spec.pipeline_class().__name__ == spec.pipeline_class_name
    assert spec.size_multiple in (8, 16, 32, 64) and spec.flow_shift > 0
    assert isinstance(spec.exports({}, 1.0), dict)


def test_tiny_scheduler_uses_the_family_flow_shift():
    from reelora.models.registry import load_model

    spec, comps = load_model("tiny-wan", components=("scheduler",))
    assert comps.scheduler.config.flow_shift == spec.flow_shift == 3.0


def test_wan_exports_comfyui_under_original_names():
    from reelora.models.wan import COMFYUI_FILE

    sd = {"blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 4), "blocks.0.attn1.to_q.lora_B.weight": torch.ones(4, 2)}
    (name, tensors, note), = family_spec("wan").exports(sd, alpha=2.0).values()
    assert name == COMFYUI_FILE and "ComfyUI" in note
    assert set(tensors) == {"diffusion_model.blocks.0.self_attn.q.lora_A.weight",
                            "diffusion_model.blocks.0.self_attn.q.lora_B.weight", "diffusion_model.blocks.0.self_attn.q.alpha"}
    assert family_spec("ltx").exports(sd, alpha=2.0) == {}


def test_unknown_family_and_tiny_names():
    with pytest.raises(ValueError, match="unknown model family 'nope'.*wan"):
        family_spec("nope")
    assert is_tiny("tiny-wan") and not is_tiny("./tiny-wan") and not is_tiny("runs/tiny-wan")


def test_nothing_outside_the_family_modules_branches_on_a_family_name():
    out = subprocess.run(["grep", "-rn", "--include=*.py", "family == ", "data", "models", "train", "reelora"],
                         cwd=ROOT, capture_output=True, text=True).stdout
    assert out == ""
