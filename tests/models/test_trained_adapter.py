"""The sampler on an adapter written by our own training loop (train/loop.py + models/lora.py export)."""
from __future__ import annotations

import json

import numpy as np

from reelora.models.sample import Sampler, sample_clips

WAN = dict(num_frames=5, height=32, width=32, steps=2)
PROMPT = "exp style, a red room"
RIGHTS = {"alpha": {"rights_holder": "Holder A", "license": "L-A"}, "beta": {"rights_holder": "Holder B", "license": "L-B"},
          "gamma": {"rights_holder": "Holder A", "license": "L-A"}}


def train_adapter(tmp, model: str):
    """A few steps of configs/tiny-wan.yaml (with `model` swapped in) on the train/ test shards -> adapter folder."""
    from reelora.train.loop import run
    from tests.train.conftest import tiny_cfg, write_shards

    # three titles of two clips each, two rights holders: the lineage's shares are checked in test_lineage.py
    shards = write_shards(tmp / "shards", titles=("alpha", "beta", "gamma"), rights=RIGHTS)
    # A high learning rate so three steps move lora_B (initialised to zero) far enough to see in frames.
    cfg = tiny_cfg(tmp / "run", shards, None, f"model={model}", "train.max_steps=3", "train.checkpoint_every=0",
                   "optim.lr=0.05", "optim.warmup_steps=0")
    assert run(cfg) == 0
    return tmp / "run" / "adapter"


def test_sample_with_adapter_from_training(trained, tmp_path):
    base = Sampler("tiny-wan", progress=False).generate(PROMPT, **WAN).frames
    (r,) = sample_clips("tiny-wan", PROMPT, loras=[str(trained)], out=tmp_path, progress=False, **WAN)
    prov = json.loads(r.sidecar.read_text())
    (a,) = prov["adapters"]
    assert a["path"] == str(trained / "pytorch_lora_weights.safetensors") and a["format"] == "diffusers"
    assert a["lineage"]["reelora.base_model"] == "tiny-wan"  # the training run's own lineage, read from the header
    assert a["lineage"]["reelora.titles"] and a["lineage"].get("reelora.shards_index_sha256")
    assert a["shares"]["holders"]["Holder A"]["clips"] == 4  # who gets paid travels with every sampled clip
    assert a["lora_config"]["r"] == 4 and a["lora_config"]["lora_alpha"] == 4.0
    assert prov["warnings"] == []

    styled = Sampler("tiny-wan", [trained], progress=False).generate(PROMPT, **WAN).frames
    assert np.abs(styled.astype(int) - base).mean() > 0.5  # training changed the model
    assert np.array_equal(Sampler("tiny-wan", [f"{trained}:0"], progress=False).generate(PROMPT, **WAN).frames, base)

    # the ComfyUI export of the same run samples the same clip (after diffusers' key conversion)
    comfy = Sampler("tiny-wan", [trained / "comfyui_lora.safetensors"], progress=False).generate(PROMPT, **WAN).frames
    assert np.abs(comfy.astype(int) - styled).max() <= 1
    fused = Sampler("tiny-wan", [trained], fuse=True, progress=False).generate(PROMPT, **WAN).frames
    assert np.abs(fused.astype(int) - styled).max() <= 1


def test_sample_tiny_ltx_with_adapter_from_training(tmp_path):
    trained_ltx = train_adapter(tmp_path, "tiny-ltx")
    settings = dict(num_frames=9, height=32, width=32, steps=2)
    base = Sampler("tiny-ltx", progress=False).generate(PROMPT, **settings).frames
    s = Sampler("tiny-ltx", [trained_ltx], progress=False)
    assert s.adapters[0].lineage["reelora.base_model"] == "tiny-ltx" and s.warnings == []
    styled = s.generate(PROMPT, **settings).frames
    assert np.abs(styled.astype(int) - base).mean() > 0.5
    zero = Sampler("tiny-ltx", [f"{trained_ltx}:0"], progress=False).generate(PROMPT, **settings).frames
    assert np.array_equal(zero, base)
