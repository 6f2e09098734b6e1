"""Model specs: tiny backbones are deterministic, load through real diffusers paths, and run."""
import hashlib
import json
import subprocess
import sys

import pytest
import torch

from reelora.models.common import flow_match_noise
from reelora.models.registry import load_model, resolve

# (name, frames, latent channels, latent frames): tiny-wan halves time, tiny-ltx quarters it.
FAMILIES = [("tiny-wan", 5, 16, 3), ("tiny-ltx", 9, 8, 3)]


def state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-ltx"])
def test_tiny_is_deterministic_per_seed(name):
    _, a = load_model(name, seed=3)
    _, b = load_model(name, seed=3)
    _, c = load_model(name, seed=4)
    for part in ("transformer", "vae", "text_encoder"):
        assert state_hash(getattr(a, part)) == state_hash(getattr(b, part))
        assert state_hash(getattr(a, part)) != state_hash(getattr(c, part))


def test_tiny_is_identical_in_another_process():
    # DDP ranks each build the base: it must be the same weights everywhere, whatever RNG state precedes.
    torch.manual_seed(12345)
    _, comps = load_model("tiny-wan", components=("transformer",))
    here = state_hash(comps.transformer)
    code = (
        "import torch, random; torch.manual_seed(999); torch.rand(10);"
        "from reelora.models.registry import load_model;"
        "from tests.models.test_specs import state_hash;"
        "_, c = load_model('tiny-wan', components=('transformer',)); print(state_hash(c.transformer))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == here


def test_subset_of_components_builds_identical_weights():
    _, full = load_model("tiny-wan")
    _, only = load_model("tiny-wan", components=("transformer",))
    assert only.vae is None and only.text_encoder is None
    assert state_hash(full.transformer) == state_hash(only.transformer)


@pytest.mark.parametrize("name,frames,channels,lat_frames", FAMILIES)
def test_encode_forward_decode_shapes(name, frames, channels, lat_frames):
    spec, comps = load_model(name)
    video = torch.rand(2, frames, 3, 32, 32) * 2 - 1
    latents = spec.encode_video(comps, video)
    assert latents.shape == (2, channels, lat_frames, 8, 8)
    text = spec.encode_prompt(comps, ["a red square", "a blue circle moving left"])
    assert text["prompt_embeds"].shape[0] == 2
    noise = torch.randn_like(latents)
    pred, target = spec.forward(comps, comps.transformer, latents, noise, torch.tensor([0.25, 0.75]), text)
    assert pred.shape == latents.shape
    torch.testing.assert_close(target, noise - latents)
    assert torch.isfinite(pred).all()
    decoded = spec.decode_latents(comps, latents)
    assert decoded.shape == video.shape and decoded.min() >= -1 and decoded.max() <= 1


def test_wan_prompt_padding_is_zeroed():
    # WanPipeline zeroes text states past each prompt's length; training must match or sampling drifts.
    spec, comps = load_model("tiny-wan")
    emb = spec.encode_prompt(comps, ["ab"])["prompt_embeds"][0]
    n_tokens = 3  # two bytes + </s>
    assert emb[:n_tokens].abs().sum() > 0
    assert emb[n_tokens:].abs().sum() == 0


def test_flow_match_noise_endpoints():
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    noisy, target = flow_match_noise(x0, noise, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(noisy[0], x0[0])
    torch.testing.assert_close(noisy[1], noise[1])
    torch.testing.assert_close(target, noise - x0)


@pytest.mark.parametrize("name,frames,channels,lat_frames", FAMILIES)
def test_one_denoising_step_of_each_pipeline(name, frames, channels, lat_frames):
    spec, comps = load_model(name)
    pipe = spec.pipeline(comps)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a green meadow", num_frames=frames, height=32, width=32, num_inference_steps=1,
              max_sequence_length=comps.extra["max_text_len"], output_type="pt")
    a = pipe(generator=torch.Generator().manual_seed(0), **kw).frames
    b = pipe(generator=torch.Generator().manual_seed(0), **kw).frames
    c = pipe(generator=torch.Generator().manual_seed(1), **kw).frames
    assert a.shape == (1, frames, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-ltx"])
def test_saved_directory_resolves_family_and_loads_same_weights(tmp_path, name):
    spec, comps = load_model(name)
    spec.pipeline(comps).save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == spec.pipeline_class_name
    spec2, loaded = load_model(str(tmp_path / "m"))
    assert spec2.family == spec.family
    assert loaded.revision and len(loaded.revision) == 16  # weights hash for lineage
    for part in ("transformer", "vae", "text_encoder"):
        assert state_hash(getattr(loaded, part)) == state_hash(getattr(comps, part))
    assert loaded.extra["max_text_len"] == comps.extra["max_text_len"]
    text_a = spec.encode_prompt(comps, ["a prompt"])["prompt_embeds"]
    text_b = spec2.encode_prompt(loaded, ["a prompt"])["prompt_embeds"]
    assert torch.equal(text_a, text_b)


def test_unknown_names_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="tiny-wan, tiny-ltx"):
        resolve("tiny-sora")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        resolve(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        resolve(str(tmp_path / ".."))  # a directory that is not a diffusers model
    with pytest.raises(FileNotFoundError, match="some-org/not-cached"):
        resolve("some-org/not-cached")  # HF_HUB_OFFLINE=1: must not reach the network
