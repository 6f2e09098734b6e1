"""Sampling on the tiny backbones: reproducibility, adapter scales, fusing, formats, outputs, provenance."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from reelora.models import media
from reelora.models.adapters import AdapterError
from reelora.models.sample import ClipRequest, Sampler, read_prompts, sample_clips

# Small enough for 2 CPU cores; tiny-wan needs frames = 1 + 2k, tiny-ltx 1 + 4k.
WAN = dict(num_frames=5, height=32, width=32, steps=2)
LTX = dict(num_frames=9, height=32, width=32, steps=2)
PROMPT = "a lighthouse at dusk, studio style"


def _frames(model, loras=(), fuse=False, seed=0, settings=WAN, prompt=PROMPT, **kw):
    return Sampler(model, loras, fuse=fuse, progress=False, **kw).generate(prompt, seed=seed, **settings).frames


@pytest.fixture(scope="module")
def base_wan():
    return _frames("tiny-wan")


def test_same_everything_gives_identical_frames(adapters, base_wan):
    assert base_wan.shape == (5, 32, 32, 3) and base_wan.dtype == np.uint8
    again = _frames("tiny-wan")  # a fresh load: nothing cached between samplers
    assert np.array_equal(base_wan, again)
    a = _frames("tiny-wan", [f"{adapters['wan']}:0.8"])
    b = _frames("tiny-wan", [(adapters["wan"], 0.8)])
    assert np.array_equal(a, b)
    assert np.array_equal(_frames("tiny-wan", f"{adapters['wan']}:0.8"), a)  # one adapter, not in a list
    assert not np.array_equal(_frames("tiny-wan", seed=1), base_wan)  # the seed matters


def test_adapter_changes_output_and_scale_zero_is_exactly_base(adapters, base_wan):
    styled = _frames("tiny-wan", [adapters["wan"]])
    assert np.abs(styled.astype(int) - base_wan).mean() > 2
    assert np.array_equal(_frames("tiny-wan", [f"{adapters['wan']}:0"]), base_wan)
    assert np.array_equal(_frames("tiny-wan", [f"{adapters['wan']}:0", f"{adapters['wan2']}:0"]), base_wan)
    assert np.array_equal(_frames("tiny-wan", [f"{adapters['wan']}:0"], fuse=True), base_wan)


def test_multiple_adapters_mix_by_scale(adapters):
    only_first = _frames("tiny-wan", [adapters["wan"]])
    # a second adapter at scale 0 contributes nothing; at 0.5 it changes the clip
    assert np.array_equal(_frames("tiny-wan", [adapters["wan"], f"{adapters['wan2']}:0"]), only_first)
    mixed = _frames("tiny-wan", [adapters["wan"], f"{adapters['wan2']}:0.5"])
    assert np.abs(mixed.astype(int) - only_first).mean() > 1


def test_fused_matches_unfused(adapters):
    loras = [f"{adapters['wan']}:0.8", f"{adapters['wan2']}:0.5"]
    unfused = Sampler("tiny-wan", loras, progress=False)
    fused = Sampler("tiny-wan", loras, fuse=True, progress=False)
    assert fused.fused and not unfused.fused
    # the LoRA layers are gone after fusing: the speed comes from plain Linear layers
    assert not any("lora" in n for n, _ in fused.pipe.transformer.named_modules())
    a = unfused.generate(PROMPT, **WAN).frames.astype(int)
    b = fused.generate(PROMPT, **WAN).frames.astype(int)
    assert np.abs(a - b).max() <= 1  # float rounding of merged weights, at most one uint8 level


@pytest.mark.parametrize("fmt", ["comfyui", "musubi"])
def test_foreign_formats_sample_like_ours(adapters, fmt):
    ours = _frames("tiny-wan", [adapters["wan"]]).astype(int)
    theirs = _frames("tiny-wan", [adapters[fmt]]).astype(int)
    assert np.abs(ours - theirs).max() <= 1


def test_mismatched_adapter_is_refused_before_sampling(adapters):
    with pytest.raises(AdapterError, match="does not match tiny-wan"):
        Sampler("tiny-wan", [adapters["ltx"]], progress=False)


def test_tiny_ltx_with_adapter(adapters):
    base = _frames("tiny-ltx", settings=LTX)
    assert base.shape == (9, 32, 32, 3)
    assert np.array_equal(base, _frames("tiny-ltx", settings=LTX))
    styled = _frames("tiny-ltx", [adapters["ltx"]], settings=LTX)
    assert np.abs(styled.astype(int) - base).mean() > 1
    assert np.array_equal(_frames("tiny-ltx", [f"{adapters['ltx']}:0"], settings=LTX), base)
    fused = _frames("tiny-ltx", [adapters["ltx"]], fuse=True, settings=LTX)
    assert np.abs(fused.astype(int) - styled).max() <= 1


def test_outputs_and_provenance(tmp_path, adapters):
    out = tmp_path / "clips"
    results = sample_clips("tiny-wan", [PROMPT], loras=[f"{adapters['wan']}:0.8", f"{adapters['comfyui']}:0.2"],
                           out=out, negative_prompt="blurry", seed=7, fps=12, progress=False, **WAN)
    (r,) = results
    assert r.mp4 == out / "000-a-lighthouse-at-dusk-studio-style.mp4" and r.sidecar == r.mp4.with_suffix(".json")
    prov = json.loads(r.sidecar.read_text())
    assert prov["prompt"] == PROMPT and prov["negative_prompt"] == "blurry" and prov["seed"] == 7
    assert prov["steps"] == 2 and prov["guidance"] == 5.0 and prov["fps"] == 12
    assert prov["size"] == {"height": 32, "width": 32} and prov["frames"] == 5
    assert prov["scheduler"]["class"] == "UniPCMultistepScheduler" and prov["scheduler"]["config"]["flow_shift"] == 3.0
    assert prov["base_model"]["id"] == "tiny-wan" and prov["base_model"]["revision"] == "seed0"
    assert prov["reelora_version"] and prov["time"].endswith("+00:00") and prov["fused"] is False
    first, second = prov["adapters"]
    assert first["path"] == str(adapters["wan"]) and first["scale"] == 0.8 and first["format"] == "diffusers"
    assert first["sha256"] == hashlib.sha256(adapters["wan"].read_bytes()).hexdigest()
    assert first["lineage"]["reelora.titles"] == ["title-001", "title-002"]
    assert first["lineage"]["reelora.shard_index_sha256"] == "ab" * 32
    assert first["lora_config"]["r"] == 4 and first["lora_config"]["lora_alpha"] == 8
    assert second["format"] == "comfyui" and second["scale"] == 0.2

    frames, tags = media.read_mp4(r.mp4)
    assert frames.shape == (5, 32, 32, 3)
    assert media.read_provenance(r.mp4) == prov  # the mp4 carries the same record as the sidecar
    import av

    with av.open(str(r.mp4)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and float(s.average_rate) == 12
    from PIL import Image

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height >= 96 and sheet.width >= 5 * 96


def test_prompts_file_plain_and_jsonl(tmp_path):
    plain = tmp_path / "prompts.txt"
    plain.write_text("# studio prompts\nfirst prompt\n\nsecond prompt\n")
    assert [r.prompt for r in read_prompts(plain, {"seed": 3})] == ["first prompt", "second prompt"]
    assert read_prompts(plain, {"seed": 3})[0].seed == 3

    jl = tmp_path / "prompts.jsonl"
    jl.write_text('{"prompt": "a fox", "seed": 5, "frames": 7, "size": "48x64", "name": "fox"}\n'
                  '{"prompt": "a bird"}\n')
    results = sample_clips("tiny-wan", prompts_file=jl, out=tmp_path / "out", seed=11, progress=False, **WAN)
    assert [r.name for r in results] == ["fox", "001-a-bird"]
    fox, bird = (json.loads(r.sidecar.read_text()) for r in results)
    assert (fox["seed"], fox["frames"], fox["size"]) == (5, 7, {"height": 48, "width": 64})
    assert (bird["seed"], bird["frames"], bird["size"]) == (11, 5, {"height": 32, "width": 32})
    assert media.read_mp4(results[0].mp4)[0].shape == (7, 48, 64, 3)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "x", "sed": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: unknown key\(s\) sed"):
        read_prompts(bad)
    bad.write_text('{"prompt": "ok"}\n{"prompt": "x", "size": "big"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: size must be"):
        read_prompts(bad)


def test_bad_settings_name_the_clip_and_rule():
    s = Sampler("tiny-wan", progress=False)
    with pytest.raises(ValueError, match=r"num_frames=6 .* 1 \+ a multiple of 2"):
        s.resolve("x", num_frames=6)
    with pytest.raises(ValueError, match=r"height=40 must be a positive multiple of 16"):
        s.resolve("x", height=40)
    with pytest.raises(ValueError, match="name '../x'"):
        s.resolve(ClipRequest(prompt="x", name="../x"))


def test_memory_options_are_wired_to_diffusers():
    s = Sampler("tiny-wan", vae_tiling=True, vae_slicing=True, cpu_offload=True, progress=False)
    assert s.pipe.vae.use_tiling and s.pipe.vae.use_slicing
    assert s.memory == {"cpu_offload": False, "vae_tiling": True, "vae_slicing": True}  # offload: GPU only
    # at tiny sizes tiling/slicing change nothing
    assert np.array_equal(s.generate(PROMPT, **WAN).frames, _frames("tiny-wan"))


def test_cli(tmp_path, adapters, capsys):
    from reelora.cli import main

    out = tmp_path / "cli"
    rc = main(["sample", "--model", "tiny-wan", "--prompt", "a red fox", "--lora", f"{adapters['musubi']}:0.5",
               "--num-frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--fps", "6", "--seed", "4",
               "--fuse", "--out", str(out), "--quiet"])
    assert rc == 0
    mp4 = out / "000-a-red-fox.mp4"
    assert capsys.readouterr().out.strip() == str(mp4)
    prov = json.loads(mp4.with_suffix(".json").read_text())
    assert prov["fused"] and prov["seed"] == 4 and prov["adapters"][0]["format"] == "musubi"
    assert (out / "contact_sheet.png").is_file()

    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x04K\x01.")
    rc = main(["sample", "--model", "tiny-wan", "--prompt", "x", "--lora", str(evil), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing a pickle-based checkpoint" in err and "evil.pt" in err


def test_base_model_mismatch_is_warned_and_recorded(adapters, caplog):
    assert Sampler("tiny-wan", [adapters["wan"]], progress=False).warnings == []
    s = Sampler("tiny-wan", [adapters["wan"]], progress=False, model_seed=1)  # another tiny-wan than trained on
    assert len(s.warnings) == 1 and "revision 'seed0'" in s.warnings[0] and "'seed1'" in s.warnings[0]
    assert s.warnings[0] in caplog.text
    assert s.generate(PROMPT, **WAN).provenance["warnings"] == s.warnings


def test_local_diffusers_directory_samples_like_the_builtin(tmp_path, base_wan, adapters):
    from reelora.models.registry import load_model

    spec, comps = load_model("tiny-wan")
    spec.pipeline(comps).save_pretrained(tmp_path / "tiny-wan-dir")
    s = Sampler(str(tmp_path / "tiny-wan-dir"), [adapters["wan"]], progress=False)
    assert s.warnings and "trained on 'tiny-wan'" in s.warnings[0]  # another path than the adapter's lineage
    # a local directory gets the real family defaults, so small runs pass their settings explicitly
    assert s.resolve("x").num_frames == 81
    styled = _frames("tiny-wan", [adapters["wan"]])
    assert np.array_equal(s.generate(PROMPT, **WAN).frames, styled)


def _cli(*args):
    from reelora.cli import main

    return main(["sample", "--model", "tiny-wan", "--prompt", "a red fox", "--num-frames", "5", "--height", "32",
                 "--width", "32", "--steps", "2", "--quiet", *args])


def test_a_nan_clip_is_an_error_naming_the_adapters_and_step_and_writes_nothing(tmp_path, capsys):
    from tests.models.conftest import lora_state_dict, write_diffusers

    sd, config = lora_state_dict("tiny-wan", seed=1)
    huge = write_diffusers(tmp_path / "huge.safetensors", {k: v * 1e30 if "lora_B" in k else v for k, v in sd.items()},
                           config)  # finite, so it passes the adapter checks
    out = tmp_path / "samples"
    assert _cli("--lora", f"{huge}:0.5", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert f"{huge} (scale 0.5)" in err and "NaN/inf after denoising step 1 of 2" in err and "nothing was written" in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_an_out_that_is_a_file_fails_before_the_model_loads(tmp_path, adapters, capsys, monkeypatch):
    import reelora.models.registry

    monkeypatch.setattr(reelora.models.registry, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert _cli("--lora", str(adapters["wan"]), "--out", str(taken)) == 2
    assert f"--out {taken}: exists and is not a directory" in capsys.readouterr().err
    assert _cli("--out", str(taken / "clips")) == 2
    assert f"--out {taken / 'clips'}: cannot create it, {taken} is a file" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"out {taken}: exists"):
        sample_clips("tiny-wan", "x", out=taken)


@pytest.mark.parametrize("model,settings", [("tiny-wan", WAN), ("tiny-ltx", LTX)])
@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_prompts_encoded_up_front_sample_the_same_frames_without_a_text_encoder(model, settings, guidance):
    """Validation encodes its prompts once and frees the text encoder: its clips must be the sampler's clips."""
    import dataclasses

    from reelora.models.sample import encode_request, render

    sampler = Sampler(model, progress=False)
    req = sampler.resolve(PROMPT, seed=3, guidance=guidance, negative_prompt="blurry", **settings)
    max_len = sampler.comps.extra["max_text_len"]
    expected = render(sampler.pipe, req, max_len)
    text = encode_request(sampler.pipe, req, max_len, sampler.spec.prompt_embeds_keys)
    # The negative branch is encoded only when guidance uses it (as the pipeline itself does).
    negatives = {k for k in text if k.startswith("negative_")}
    assert (len(negatives) > 0) == (guidance > 1) and set(text) <= set(sampler.spec.prompt_embeds_keys)
    assert all(t.device.type == "cpu" for t in text.values())
    bare = type(sampler.pipe)(**{**sampler.pipe.components, "text_encoder": None})
    bare.set_progress_bar_config(disable=True)
    assert np.array_equal(render(bare, req, max_len, text=text), expected)
    other = encode_request(sampler.pipe, dataclasses.replace(req, prompt="a red fox"), max_len, sampler.spec.prompt_embeds_keys)
    assert not np.array_equal(render(bare, req, max_len, text=other), expected)  # the embeddings are what it samples from
