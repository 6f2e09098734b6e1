"""Switching adapters on one loaded backbone (`Sampler.add_adapter` / `use_adapters`): each choice gives, bit for
bit, the frames of a Sampler built with just those adapters, and the provenance names just those."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from reelora.models.adapters import AdapterError, read_adapter
from reelora.models.sample import Sampler

WAN = dict(num_frames=5, height=32, width=32, steps=2)
PROMPT = "a lighthouse at dusk, studio style"


def _frames(sampler: Sampler) -> np.ndarray:
    return sampler.generate(PROMPT, seed=0, **WAN).frames


def _fresh(loras=()) -> np.ndarray:
    return _frames(Sampler("tiny-wan", loras, progress=False))


def test_each_choice_samples_like_a_sampler_built_with_it(adapters):
    base, styled = _fresh(), _fresh([(adapters["wan"], 0.8)])
    mixed = _fresh([adapters["wan"], f"{adapters['wan2']}:0.5"])
    s = Sampler("tiny-wan", progress=False)
    s.add_adapter("style", adapters["wan"])
    s.add_adapter("grain", str(adapters["wan2"]))
    assert list(s.attached) == ["style", "grain"]
    assert np.array_equal(_frames(s), base)  # attached adapters stay off until used

    s.use_adapters({"style": 0.8})
    assert np.array_equal(_frames(s), styled)
    prov = s.generate(PROMPT, **WAN).provenance
    assert [(a["path"], a["scale"]) for a in prov["adapters"]] == [(str(adapters["wan"]), 0.8)] and prov["warnings"] == []
    # a mix adds up in attach order whatever the order asked: the frames of the sampler built in that order
    s.use_adapters({"grain": 0.5, "style": 1.0})
    assert np.array_equal(_frames(s), mixed)
    assert [(a.path, a.scale) for a in s.adapters] == [(adapters["wan"], 1.0), (adapters["wan2"], 0.5)]
    # strength 0 is off, none active is the base model exactly (after adapters were on)
    for choice in ({"style": 0, "grain": 0.0}, {}):
        s.use_adapters(choice)
        assert np.array_equal(_frames(s), base) and s.adapters == [] and s.adapter_names == []
    s.use_adapters({"style": 0.8})  # and back on
    assert np.array_equal(_frames(s), styled)


def test_constructor_adapters_are_attached_under_their_path(adapters):
    s = Sampler("tiny-wan", [f"{adapters['wan']}:0.8", adapters["wan"]], progress=False)
    assert list(s.attached) == [str(adapters["wan"]), f"{adapters['wan']}#2"]  # the same file twice: two adapters
    assert s.strengths == {str(adapters["wan"]): 0.8, f"{adapters['wan']}#2": 1.0}
    s.add_adapter("grain", adapters["wan2"])  # gets a peft name of its own, the constructor's keep theirs
    assert [a.name for g in s.attached.values() for a in g] == ["lora0", "lora1", "lora2"]
    s.use_adapters({str(adapters["wan"]): 0.8})
    assert np.array_equal(_frames(s), _fresh([(adapters["wan"], 0.8)]))


def test_refusals_name_the_problem_and_change_nothing(adapters):
    s = Sampler("tiny-wan", progress=False)
    s.add_adapter("style", adapters["wan"])
    s.use_adapters({"style": 0.5})
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) nope; attached: style"):
        s.use_adapters({"nope": 1.0, "style": 1.0})
    with pytest.raises(AdapterError, match="scale 1e\\+09 is out of range"):
        s.use_adapters({"style": 1e9})
    with pytest.raises(ValueError, match="'style' is already attached"):
        s.add_adapter("style", adapters["wan2"])
    with pytest.raises(AdapterError, match="does not match tiny-wan"):  # an LTX adapter: refused before it loads
        s.add_adapter("ltx", adapters["ltx"])
    assert list(s.attached) == ["style"] and s.strengths == {"style": 0.5}
    assert [a.scale for a in s.adapters] == [0.5]
    # DoRA: peft scales the low-rank part, not the magnitudes, so only strength 1 (or off) means what it says
    plain = read_adapter(adapters["wan"])
    dora = dataclasses.replace(plain, state_dict={**plain.state_dict, "transformer.blocks.0.attn1.to_q.lora_magnitude_vector":
                                                  torch.ones(s.pipe.transformer.blocks[0].attn1.to_q.out_features)},
                               lora_metadata={**plain.lora_metadata, "transformer.use_dora": True})
    s.add_adapter("dora", dora)
    with pytest.raises(AdapterError, match="a DoRA adapter mixes at strength 1 only .* got 0.5"):
        s.use_adapters({"dora": 0.5})
    s.use_adapters({"dora": 1.0})
    assert [a.path for a in s.adapters] == [adapters["wan"]]

    fused = Sampler("tiny-wan", [adapters["wan"]], fuse=True, progress=False)
    for call in (lambda: fused.use_adapters({}), lambda: fused.add_adapter("grain", adapters["wan2"])):
        with pytest.raises(RuntimeError, match=r"fused sampler: Sampler\(fuse=True\) merged its adapters"):
            call()
