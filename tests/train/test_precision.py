"""Memory options on CPU: bf16 autocast and gradient checkpointing train, and keep the LoRA weights fp32."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from reelora.train.loop import run
from tests.train.conftest import tiny_cfg


def _losses(out):
    return [json.loads(l)["train/loss"] for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def test_gradient_checkpointing_gives_the_same_training(tmp_path, shards, cache):
    # Recomputing activations in backward must not change the maths: same losses and adapter as without it.
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    common = ("train.max_steps=2", "train.checkpoint_every=0")
    assert run(tiny_cfg(plain, shards, cache, *common)) == 0
    assert run(tiny_cfg(ckpt, shards, cache, *common, "train.gradient_checkpointing=true")) == 0
    assert _losses(ckpt) == _losses(plain)
    a = load_file(plain / "adapter" / "pytorch_lora_weights.safetensors")
    b = load_file(ckpt / "adapter" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_bf16_trains_with_fp32_lora_weights(tmp_path, shards, cache):
    out = tmp_path / "bf16"
    assert run(tiny_cfg(out, shards, cache, "train.max_steps=2", "train.checkpoint_every=0",
                        "train.mixed_precision=bf16")) == 0
    losses = _losses(out)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    sd = load_file(out / "adapter" / "pytorch_lora_weights.safetensors")
    assert sd and all(t.dtype == torch.float32 for t in sd.values())
    assert any(t.abs().sum() > 0 for k, t in sd.items() if "lora_B" in k)  # it trained
