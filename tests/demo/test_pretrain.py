"""The tiny pretrained base builder at very small size: diffusers dir, loadable, cached by settings."""
import json

import pytest
import torch

from reelora.demo.pretrain import INFO_FILE, BaseSettings, build_base

TINY = dict(minutes=0.5, vae_max_steps=2, transformer_max_steps=3, latent_clips=16, vae_batch=2, transformer_batch=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xdg")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(cache))
    logs = []
    out, info = build_base(tmp_path_factory.mktemp("out") / "base", BaseSettings(**TINY), log=logs.append)
    yield out, info, cache, logs, mp
    mp.undo()


def test_saves_a_diffusers_wan_pipeline_with_its_record(built):
    out, info, cache, logs, _ = built
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "WanPipeline"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / sub).is_dir(), sub
    assert info == json.loads((out / INFO_FILE).read_text())
    assert info["vae"]["steps"] == 2 and info["transformer"]["steps"] == 3
    assert 0 < info["vae_psnr_db"] < 60
    assert info["params"]["transformer"] > 40_000  # wider than tiny-wan's transformer
    assert (cache / "reelora" / "base" / info["key"] / INFO_FILE).is_file()
    assert any("building" in line for line in logs)


def test_loads_through_the_registry_and_samples(built):
    from reelora.models.registry import load_model

    out, info, *_ = built
    spec, comps = load_model(str(out))
    assert spec.family == "wan" and comps.extra["max_text_len"] == 64
    # The latent statistics measured on the corpus are what the pipeline normalises with.
    assert list(comps.vae.config.latents_std) == pytest.approx(info["latents_std"])
    assert min(info["latents_std"]) > 0
    pipe = spec.pipeline(comps)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(prompt="a red circle moving left", num_frames=5, height=32, width=32, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="pt", max_sequence_length=64).frames
    assert tuple(frames.shape) == (1, 5, 3, 32, 32) and torch.isfinite(frames).all()


def test_second_build_reuses_the_cache(built, tmp_path):
    out, info, cache, _, _ = built
    logs = []
    out2, info2 = build_base(tmp_path / "again", BaseSettings(**TINY), log=logs.append)
    assert info2 == info and any("reusing" in line for line in logs)
    a = (out / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == (out2 / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_cache_key_follows_the_settings():
    assert BaseSettings(**TINY).key() == BaseSettings(**TINY).key()
    assert BaseSettings(**TINY).key() != BaseSettings(**{**TINY, "seed": 1}).key()
    assert BaseSettings(**TINY).key() != BaseSettings(**{**TINY, "minutes": 1.0}).key()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="num_frames"):
        BaseSettings(num_frames=4)
    with pytest.raises(ValueError, match="minutes"):
        BaseSettings(minutes=0)
    with pytest.raises(ValueError, match="output directory"):
        build_base(None, BaseSettings(**TINY), use_cache=False)
