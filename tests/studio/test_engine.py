"""The studio's engine without a browser: one Sampler, adapters switched per request (`Sampler.use_adapters`); each
clip's provenance names exactly the adapters that were on. A two-expert adapter folder is one adapter."""
from __future__ import annotations

import json

import pytest

from reelora.studio.engine import Studio
from tests.models.conftest import lora_state_dict, write_diffusers, write_expert_adapter

SETTINGS = dict(steps=1, num_frames=5, height=32, width=32)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    for name, seed in (("style-a/adapter/pytorch_lora_weights.safetensors", 1), ("grain.safetensors", 2)):
        write_diffusers(root / "adapters" / name, *lora_state_dict("tiny-wan", seed=seed))
    ltx, ltx_cfg = lora_state_dict("tiny-ltx", seed=3)  # another backbone's adapter: listed with its reason
    write_diffusers(root / "adapters" / "ltx.safetensors", ltx, ltx_cfg)
    return Studio("tiny-wan", root / "adapters", root / "clips")


def test_each_request_records_only_the_adapters_it_used(studio):
    assert list(studio.adapters) == ["grain.safetensors", "style-a/adapter"]
    assert list(studio.sampler.attached) == ["grain.safetensors", "style-a/adapter"]
    [ltx] = [e for e in studio.entries if e.error]
    assert ltx.key == "ltx.safetensors" and "does not match tiny-wan" in ltx.error and ltx.experts == []
    req = studio.request("exp style, a red room", 3, **SETTINGS)
    mixed = studio.generate(req, {"style-a/adapter": 0.7, "grain.safetensors": 0})
    assert [(a["path"].split("adapters/")[1], a["scale"]) for a in mixed.provenance["adapters"]] == [
        ("style-a/adapter/pytorch_lora_weights.safetensors", 0.7)]
    base = studio.generate(req, {})
    assert json.loads(base.sidecar.read_text())["adapters"] == []
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) nope; attached: grain.safetensors, style-a/adapter"):
        studio.generate(req, {"nope": 1.0})


def test_a_two_expert_folder_is_one_adapter_switching_both_experts(tmp_path):
    write_expert_adapter(tmp_path / "adapters" / "style" / "adapter")
    studio = Studio("tiny-wan22-a14b", tmp_path / "adapters", tmp_path / "clips")
    assert list(studio.adapters) == ["style/adapter"]
    clip = studio.generate(studio.request("a fox", 1, steps=1, num_frames=5), {"style/adapter": 1.0})
    assert [(a["path"].rsplit("/", 1)[1], a.get("component", "transformer")) for a in clip.provenance["adapters"]] == [
        ("pytorch_lora_weights.safetensors", "transformer"), ("pytorch_lora_weights_low_noise.safetensors", "transformer_2")]
