"""SampleSettings (the one definition of sampling settings), their bounds, and the one dtype vocabulary."""
from __future__ import annotations

import pytest
import torch

from reelora.dtypes import NAMES, canonical_dtype, parse_dtype
from reelora.models.sample import ClipRequest
from reelora.models.settings import MAX_SEED, SampleSettings


@pytest.mark.parametrize("key,value,match", [
    ("steps", 0, r"steps: must be in \[1, 1000\]"),
    ("steps", 10**9, r"steps: must be in \[1, 1000\]"),
    ("num_frames", 2000, r"num_frames: must be in \[1, 1025\]"),
    ("height", 5000, r"height: must be in \[1, 4096\]"),
    ("width", -16, r"width: must be in"),
    ("guidance", float("nan"), r"guidance: must be a finite number"),
    ("fps", float("inf"), r"fps: must be a finite number"),
    ("steps", 2.5, r"steps: must be an integer"),
])
def test_settings_bounds_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        SampleSettings(**{key: value})


def test_seed_bounds_and_request_from_dict_names_the_line():
    ClipRequest(prompt="x", seed=MAX_SEED)
    with pytest.raises(ValueError, match=r"seed: must be in \[0, 2\*\*63-1\]"):
        ClipRequest(prompt="x", seed=10**19)
    with pytest.raises(ValueError, match=r"prompts.jsonl:3: steps: must be in"):
        ClipRequest.from_dict({"prompt": "x", "steps": 5000}, where="prompts.jsonl:3")


def test_request_is_settings_plus_prompt_seed_name():
    req = ClipRequest(prompt="x", seed=3, name="a", steps=2)
    assert req.settings() == SampleSettings(steps=2)
    assert req.filled(SampleSettings(steps=9, fps=8.0))["steps"] == 2


def test_validation_config_embeds_sample_settings():
    from reelora.train.config import ConfigError, load_config

    cfg = load_config(None, ["validation.sample.steps=3", "validation.sample.guidance=1.0"])
    assert cfg.validation.sample == SampleSettings(steps=3, guidance=1.0)
    with pytest.raises(ConfigError, match=r"validation.sample.*steps: must be in"):
        load_config(None, ["validation.sample.steps=100000"])
    with pytest.raises(ConfigError, match=r"validation.seed"):
        load_config(None, [f"validation.seed={2**64}"])


def test_one_dtype_vocabulary():
    assert parse_dtype("bf16") is parse_dtype("bfloat16") is torch.bfloat16
    assert parse_dtype(torch.float16) is torch.float16
    assert canonical_dtype("float32") == "fp32" and set(NAMES) >= {"fp32", "bf16", "fp16"}
    with pytest.raises(ValueError, match=r"--dtype: unknown dtype 'int8'"):
        parse_dtype("int8", "--dtype")
