"""Validation: held-out loss at fixed quantiles (fixed noise: repeatable) and sample clips written to disk."""
from __future__ import annotations

import json

import pytest

from reelora.train.loop import run
from tests.train.conftest import tiny_cfg


def test_validation_loss_and_samples(tmp_path, shards, cache):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, shards, cache, "train.max_steps=2", "validation.every=1", "validation.num_clips=2",
                   "validation.quantiles=[0.1, 0.5, 0.9]", "validation.sample.steps=2",
                   "validation.prompts=[exp style a red room, exp style a blue room]")
    assert run(cfg) == 0
    recs = [json.loads(l) for l in (out / "logs/metrics.jsonl").read_text().splitlines()]
    val = [r for r in recs if "val/loss" in r]
    assert [r["step"] for r in val] == [1, 2]
    for r in val:
        assert {"val/loss_q0.1", "val/loss_q0.5", "val/loss_q0.9"} <= r.keys()
        assert r["val/loss"] > 0
    # Loss is measured at different noise levels, so the quantiles differ.
    assert len({round(val[0][f"val/loss_q{q}"], 6) for q in ("0.1", "0.5", "0.9")}) == 3
    import av

    for step in (1, 2):
        paths = sorted((out / "samples" / f"step-{step:06d}").glob("*.mp4"))
        assert [p.name for p in paths] == ["prompt-00.mp4", "prompt-01.mp4"]
        with av.open(str(paths[0])) as c:
            frames = list(c.decode(video=0))
        assert len(frames) == 5 and frames[0].width == 32
    from reelora.models.credentials import read_manifest

    manifest, state, _ = read_manifest(paths[0])  # validation samples carry content credentials too
    (action,) = next(a["data"]["actions"] for a in manifest["assertions"] if a["label"] == "c2pa.actions.v2")
    assert state == "Valid" and action["action"] == "c2pa.created" and action["parameters"]["base_model"]["id"] == "tiny-wan"


def test_a_nan_validation_sample_is_reported_and_not_written(tmp_path, shards, cache, monkeypatch, capsys):
    import reelora.models.sample as sample

    def nan_clip(pipe, req, max_text_len, text=None):
        raise sample.SampleError("the latents are NaN/inf after denoising step 1 of 2")

    monkeypatch.setattr(sample, "render", nan_clip)
    out = tmp_path / "run"
    cfg = tiny_cfg(out, shards, cache, "train.max_steps=1", "validation.every=1", "validation.num_clips=1",
                   "validation.sample.steps=2", "validation.prompts=[exp style a red room]")
    assert run(cfg) == 0  # training goes on: the sample is reported, not written as a black clip
    assert "validation sample 0 ('exp style a red room') at step 1: the latents are NaN/inf" in capsys.readouterr().err
    assert not list((out / "samples").rglob("*.mp4"))
    val = [json.loads(l) for l in (out / "logs/metrics.jsonl").read_text().splitlines() if "val/loss" in l]
    assert val[0]["val/samples"] == []


def test_cached_validation_encodes_prompts_once_frees_the_text_encoder_and_decodes_in_pieces(tmp_path, shards, cache,
                                                                                            monkeypatch):
    """With a cache: the text encoder lives only while the prompts are encoded at start (gone before the first
    step), samples come from those embeddings through a pipeline without a text encoder, and the VAE (loaded
    once, kept on the CPU) decodes tiled and sliced under the training autocast (bf16 here)."""
    import gc
    import weakref

    import torch
    from diffusers import AutoencoderKLWan, WanPipeline

    import reelora.models.registry as registry
    import reelora.train.loop as loop

    loaded = {"text_encoder": [], "vae": []}  # weak references to every module validation loads
    load_model = registry.load_model

    def recording_load(*args, components=(), **kwargs):
        spec, comps = load_model(*args, components=components, **kwargs)
        for name in loaded:
            if getattr(comps, name) is not None:
                loaded[name].append(weakref.ref(getattr(comps, name)))
        return spec, comps

    alive_at_steps = []
    train_step = loop.train_step

    def checking_step(ctx, batches, step):
        gc.collect()
        alive_at_steps.append(sum(r() is not None for r in loaded["text_encoder"]))
        return train_step(ctx, batches, step)

    calls, decodes = [], []
    pipe_call, decode = WanPipeline.__call__, AutoencoderKLWan.decode

    def recording_call(self, **kwargs):
        calls.append({"keys": set(kwargs), "text_encoder": self.text_encoder,
                      "embeds": kwargs.get("prompt_embeds", torch.empty(0)).clone()})
        return pipe_call(self, **kwargs)

    def recording_decode(self, z, return_dict=True):
        out = decode(self, z, return_dict=return_dict)
        decodes.append({"batch": z.shape[0], "weights": self.dtype, "out": (out.sample if return_dict else out[0]).dtype,
                        "tiling": self.use_tiling, "slicing": self.use_slicing, "vae": id(self)})
        return out

    from reelora.train.validate import Validator

    between = []  # where the validation VAE is after each validation
    samples = Validator.samples

    def recording_samples(self, model, step):
        paths = samples(self, model, step)
        between.append(next(self._vae.parameters()).device.type)
        return paths

    monkeypatch.setattr(registry, "load_model", recording_load)
    monkeypatch.setattr(loop, "train_step", checking_step)
    monkeypatch.setattr(WanPipeline, "__call__", recording_call)
    monkeypatch.setattr(AutoencoderKLWan, "decode", recording_decode)
    monkeypatch.setattr(Validator, "samples", recording_samples)
    prompts = ["exp style a red room", "exp style a blue room"]
    cfg = tiny_cfg(tmp_path / "run", shards, cache, "train.max_steps=2", "validation.every=1", "validation.num_clips=1",
                   "validation.sample.steps=2", "validation.sample.guidance=5.0", "train.mixed_precision=bf16",
                   f"validation.prompts=[{', '.join(prompts)}]")
    assert run(cfg) == 0

    assert len(loaded["text_encoder"]) == 1  # loaded once, at start
    assert alive_at_steps == [0, 0]  # and no longer referenced by anything when training steps run
    assert len(calls) == 4  # 2 prompts x 2 validations
    for c in calls:
        assert c["text_encoder"] is None and "prompt" not in c["keys"] and "negative_prompt" not in c["keys"]
        assert {"prompt_embeds", "negative_prompt_embeds"} <= c["keys"]
    assert torch.equal(calls[0]["embeds"], calls[2]["embeds"]) and not torch.equal(calls[0]["embeds"], calls[1]["embeds"])
    # Embeddings as the sampler's pipeline makes them (same text encoder weights, training dtype).
    from reelora.models.sample import ClipRequest, encode_request
    from reelora.models.spec import Components

    spec, comps = load_model("tiny-wan", dtype=torch.bfloat16, components=("text_encoder", "tokenizer"))
    pipe = spec.pipeline(Components(family="wan", source="tiny-wan", text_encoder=comps.text_encoder, tokenizer=comps.tokenizer))
    req = ClipRequest(prompt=prompts[1], guidance=5.0)
    expected = encode_request(pipe, req, comps.extra["max_text_len"], spec.prompt_embeds_keys)["prompt_embeds"]
    assert torch.equal(calls[1]["embeds"].cpu(), expected.to(calls[1]["embeds"].dtype))

    assert len(loaded["vae"]) == 1 and len(decodes) == 4  # one VAE for both validations, one clip per decode
    assert len({d["vae"] for d in decodes}) == 1 and between == ["cpu", "cpu"]  # it waits on the CPU in between
    gc.collect()
    assert loaded["vae"][0]() is None  # and is gone with the run
    for d in decodes:
        assert d["batch"] == 1 and d["tiling"] and d["slicing"]
        # Computed in the training dtype; the Wan VAE's weights stay fp32 (the family's fp32_components).
        assert d["out"] == torch.bfloat16 and d["weights"] == torch.float32


def test_decoding_in_pieces_restores_the_vae_as_it_was():
    """Without a cache the sampling VAE is training's own, which must go on encoding clips untiled."""
    from reelora.models.registry import load_model
    from reelora.train.validate import decode_in_pieces

    vae = load_model("tiny-wan", components=("vae",))[1].vae
    with decode_in_pieces(vae):
        assert vae.use_tiling and vae.use_slicing
    assert not vae.use_tiling and not vae.use_slicing
    vae.enable_slicing()  # a setting made elsewhere is kept
    with decode_in_pieces(vae):
        assert vae.use_tiling and vae.use_slicing
    assert not vae.use_tiling and vae.use_slicing


def test_the_tiny_wan_vae_decodes_tile_by_tile():
    """Validation turns tiling on; at 32x32 no tile is cut, so force small tiles to run diffusers' tiled path."""
    import torch

    from reelora.models.registry import load_model

    vae = load_model("tiny-wan", components=("vae",))[1].vae
    z = torch.randn(1, 16, 2, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = vae.decode(z).sample
        vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                          tile_sample_stride_width=24)
        tiled = vae.decode(z).sample
    assert tiled.shape == whole.shape == (1, 3, 3, 96, 96) and torch.isfinite(tiled).all()
    assert not torch.equal(tiled, whole)  # the tiles were decoded separately and blended


# What validation may add to a training run's RSS on CPU besides its models: code and buffers (PyAV/libx264
# loaded to write the mp4s, ~19 MiB; diffusers' pipeline and the sampling/decode buffers, ~12 MiB) and allocator
# slack. On tiny-wan, whose models weigh kilobytes, validation added +31 to +48 MiB to the peak over 3 runs
# (BENCHMARKS.md "Validation memory"); the peak varies by ~17 MiB run to run.
VALIDATION_RSS_MARGIN_MIB = 80
TEXT_LAYERS, TEXT_FFN = 16, 32768  # a ~190 MiB text encoder: more than twice the margin, so holding it shows


@pytest.fixture(scope="module")
def bench():
    import runpy
    from pathlib import Path

    return runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "validation_memory.py"))


def _runs(bench, tmp_path, model: str, shards, cache) -> tuple[dict, dict]:
    """Peak and per-step RSS of 3 cached training steps without validation, then validating at every step."""
    base = ["--config", "configs/tiny-wan.yaml", f"model={model}", f"data.shards={shards}", f"data.cache={cache}",
            "log.progress_bar=false", "train.max_steps=3", "train.checkpoint_every=0"]
    without = bench["measure"](tmp_path, "without", [*base, f"train.output_dir={tmp_path / 'without'}", "validation.every=0"])
    with_val = bench["measure"](tmp_path, "with", [
        *base, f"train.output_dir={tmp_path / 'with'}", "validation.every=1", "validation.num_clips=2",
        "validation.sample.steps=2", "validation.prompts=[exp style a red room, exp style a blue room]"])
    assert len(list((tmp_path / "with" / "samples").rglob("*.mp4"))) == 6  # 3 validations x 2 prompts ran
    print(f"{model}: without validation {without}; with {with_val}")
    return without, with_val


@pytest.mark.slow
def test_validation_adds_at_most_a_small_margin_to_peak_memory(tmp_path, shards, cache, bench):
    without, with_val = _runs(bench, tmp_path, "tiny-wan", shards, cache)
    assert with_val["peak_mib"] - without["peak_mib"] <= VALIDATION_RSS_MARGIN_MIB, (without, with_val)


@pytest.mark.slow
def test_no_text_encoder_is_held_while_training_runs(tmp_path, shards, bench):
    """tiny-wan with a larger text encoder (a local diffusers directory): the steps that follow a validation
    hold no more than the steps of a run without validation, up to the margin; the encoder would not fit in it."""
    from reelora.train.cache import build_cache

    model, te_mib = bench["big_text_model"](tmp_path / "model", TEXT_LAYERS, TEXT_FFN)
    assert te_mib > 2 * VALIDATION_RSS_MARGIN_MIB
    build_cache(str(shards), str(model), str(tmp_path / "cache"), progress=False)
    without, with_val = _runs(bench, tmp_path, str(model), shards, tmp_path / "cache")
    assert with_val["peak_mib"] - without["peak_mib"] > te_mib / 2  # it was loaded (at start, to encode the prompts)
    for a, b in zip(without["step_rss_mib"], with_val["step_rss_mib"], strict=True):
        assert b - a <= VALIDATION_RSS_MARGIN_MIB, (without, with_val)
