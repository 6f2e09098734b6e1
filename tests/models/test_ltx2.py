"""LTX-2: selected from model_index.json, a tiny flavour built offline (tiny Gemma 3, byte tokenizer), LoRA on the
video stream only, and a training forward that leaves the audio stream out of the loss and the gradients."""
from __future__ import annotations

import json

import pytest
import torch

from reelora.models.registry import load_model, resolve

NAME = "tiny-ltx2"


@pytest.fixture(scope="module")
def tiny():
    return load_model(NAME)


def test_family_from_model_index(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "LTX2Pipeline"}))
    assert resolve(str(tmp_path)).family == "ltx2" and resolve(NAME).family == "ltx2"


def test_models_show(capsys):
    from reelora.cli import main

    assert main(["models", "show", NAME, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pipeline"] == "LTX2Pipeline"
    assert {"transformer", "vae", "text_encoder", "tokenizer", "scheduler", "connectors", "audio_vae", "vocoder"} == set(info["components"])
    assert info["components"]["text_encoder"]["class"] == "Gemma3ForConditionalGeneration"
    assert info["lora_target_modules"] == 2 * 10  # 2 blocks x video attn1/attn2 q,k,v,o + ff in/out; no audio module


def test_lora_is_video_only_and_the_audio_stream_gets_no_gradient(tiny):
    from reelora.models.lora import attach_lora, lora_state_dict

    spec, comps = load_model(NAME, components=("transformer",))
    attach_lora(comps.transformer, rank=2, alpha=2.0, target_modules=list(spec.lora_targets))
    keys = lora_state_dict(comps.transformer)
    assert len([k for k in keys if "lora_A" in k]) == 20 and not any("audio" in k for k in keys)
    for n, p in comps.transformer.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # a non-zero adapter
    latents, noise = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    text = spec.encode_prompt(tiny[1], ["a robot", "a cat"])
    pred, target = spec.forward(comps, comps.transformer, latents, noise, torch.tensor([0.3, 0.8]), text)
    assert pred.shape == target.shape == latents.shape
    torch.testing.assert_close(target, noise - latents)
    (pred - target).pow(2).mean().backward()
    grads = {n for n, p in comps.transformer.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n and "audio" not in n for n in grads)


def test_tiny_pipeline_samples_video(tiny):
    from reelora.models.sample import Sampler

    clip = Sampler(NAME, progress=False).generate("a robot", seed=0, steps=2, num_frames=5)
    assert clip.frames.shape == (5, 32, 32, 3) and clip.frames.dtype.name == "uint8"
