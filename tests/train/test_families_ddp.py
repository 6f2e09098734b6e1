"""Each new family end to end: a tiny run under 2-process DDP (gloo), its adapter exported, then sampled with it;
the two-expert Wan2.2-A14B also under FSDP (equal to DDP, bit for bit) and resumed from a one-expert checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.conftest import cfg_args, launch

ROOT = Path(__file__).parents[2]

# seed 4 trains the high-noise expert at step 1 and the low-noise one at step 2 (train/experts.py draws the expert
# per step from the seed): two steps train both experts' LoRAs.
FAMILIES = [
    ("tiny-wan22-5b", 29691, ["pytorch_lora_weights.safetensors", "comfyui_lora.safetensors"]),
    ("tiny-wan22-a14b", 29692, ["pytorch_lora_weights.safetensors", "pytorch_lora_weights_low_noise.safetensors",
                                "comfyui_lora_high_noise.safetensors", "comfyui_lora_low_noise.safetensors"]),
    ("tiny-ltx2", 29693, ["pytorch_lora_weights.safetensors"]),  # video-only LoRA; no other LTX-2 layout is written
]


ARGS = ("train.max_steps=2", "train.batch_size=1", "train.seed=4", "optim.warmup_steps=0")


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory):
    """model -> the output folder of its 2-step run under 2-process DDP (each model run once per module)."""
    done = {}

    def run(model: str) -> Path:
        if model not in done:
            out = tmp_path_factory.mktemp("ddp") / model
            port = next(p for m, p, _ in FAMILIES if m == model)
            r = launch(port, str(ROOT / "train.py"), *cfg_args(out, shards, None, f"model={model}", *ARGS,
                                                                 "train.checkpoint_every=0"))
            assert r.returncode == 0, r.stderr[-3000:]
            done[model] = out
        return done[model]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("model, port, files", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_trains_under_ddp_exports_and_samples(model, port, files, ddp_run):
    from safetensors.torch import load_file

    from reelora.models.sample import Sampler

    out = ddp_run(model)
    digests = json.loads((out / "logs" / "replicas.json").read_text())["digests"]
    assert len(digests) == 2 and len(set(digests)) == 1  # both ranks ended with the same adapter
    adapter = out / "adapter"
    assert sorted(p.name for p in adapter.glob("*.safetensors")) == sorted(files)
    for f in files:
        if f.startswith("pytorch_"):  # every exported expert moved from its zero-initialised lora_B
            assert any(float(t.abs().max()) > 0 for k, t in load_file(str(adapter / f)).items() if "lora_B" in k), f

    sampler = Sampler(model, loras=[str(adapter)], progress=False)
    assert len(sampler.adapters) == len([f for f in files if f.startswith("pytorch_")])
    clip = sampler.generate("exp style, scene 1", seed=0, steps=2, num_frames=5)
    d = sampler.defaults
    assert clip.frames.shape == (5, d.height, d.width, 3)
    assert [a["path"] for a in clip.provenance["adapters"]] == [str(a.path) for a in sampler.adapters]


@pytest.mark.slow
def test_two_experts_train_under_fsdp_as_under_ddp_and_resume_exactly(ddp_run, shards, tmp_path):
    """Wan2.2-A14B's two experts, each sharded: seed 4 trains the high-noise expert at step 1 and the low-noise
    one at step 2 (the other expert's blocks stay sharded and idle), so the step-1 checkpoint holds optimizer state
    for one expert only, and the resumed step 2 must start the other's from none."""
    import torch
    from safetensors.torch import load_file

    def losses(out: Path) -> list[float]:
        lines = (out / "logs" / "metrics.jsonl").read_text().splitlines()
        return [r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r]

    files = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_low_noise.safetensors")  # one per expert
    args = ("model=tiny-wan22-a14b", *ARGS, "train.parallel=fsdp", "train.checkpoint_every=1")
    ddp, fsdp, resumed = ddp_run("tiny-wan22-a14b"), tmp_path / "fsdp", tmp_path / "resumed"
    r = launch(29694, str(ROOT / "train.py"), *cfg_args(fsdp, shards, None, *args))
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(fsdp) == losses(ddp)
    for name in files:  # equal to DDP's bit for bit
        a, b = load_file(fsdp / "adapter" / name), load_file(ddp / "adapter" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    step1 = fsdp / "checkpoints" / "step-000001"
    # the resumed run validates after its last step: held-out loss and a sample through the sharded experts
    resume = [a for a in cfg_args(resumed, shards, None, *args, f"train.resume={step1}") if a != "validation.every=0"]
    r = launch(29695, str(ROOT / "train.py"), *resume, "validation.every=2", "validation.num_clips=1",
               "validation.sample.steps=2", "validation.prompts=[exp style a red room]")
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(resumed)[-1] == losses(fsdp)[-1]
    records = [json.loads(line) for line in (resumed / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val/loss" in r] == [2]
    assert [p.name for p in (resumed / "samples" / "step-000002").glob("*.mp4")] == ["prompt-00.mp4"]
    for name in files:
        a, b = load_file(resumed / "adapter" / name), load_file(fsdp / "adapter" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
