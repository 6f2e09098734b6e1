"""Each new family end to end: a tiny run under 2-process DDP (gloo), its adapter exported, then sampled with it."""
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


@pytest.mark.slow
@pytest.mark.parametrize("model, port, files", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_trains_under_ddp_exports_and_samples(model, port, files, shards, tmp_path):
    from safetensors.torch import load_file

    from reelora.models.sample import Sampler

    out = tmp_path / "run"
    r = launch(port, str(ROOT / "train.py"), *cfg_args(out, shards, None, f"model={model}", "train.max_steps=2",
                                                         "train.batch_size=1", "train.checkpoint_every=0", "train.seed=4",
                                                         "optim.warmup_steps=0"))
    assert r.returncode == 0, r.stderr[-3000:]
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
