"""The adapter's model card: base model, licence, trigger word, and usage code that runs as written."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from reelora.models.card import Base, code_blocks, describe_base, licence_section

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
RIGHTS = {"alpha": {"license": "CC-BY-3.0", "rights_holder": "Blender Foundation", "rights_expires": "2030-01-01"},
          "beta": {"license": "Studio contract 42", "rights_holder": "Example Pictures", "rights_expires": None}}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def train(tmp, model: str):
    """Three steps of configs/tiny-wan.yaml on shards whose clips carry rights and whose library sets a trigger."""
    from reelora.train.loop import run
    from tests.train.conftest import tiny_cfg, write_shards

    shards = write_shards(tmp / "shards", rights=RIGHTS, library={"studio": "Example Pictures", "trigger": "exp style"})
    cfg = tiny_cfg(tmp / "run", shards, None, f"model={model}", "train.max_steps=3", "train.checkpoint_every=0",
                   "optim.lr=0.05", "optim.warmup_steps=0")
    assert run(cfg) == 0
    return tmp / "run" / "adapter"


def test_base_is_named_by_what_it_is(tmp_path):
    assert describe_base("tiny-wan", "wan") == Base("tiny-wan", "tiny")
    assert describe_base(HUB_ID, "wan") == Base(HUB_ID, "hub", HUB_ID, None, "apache-2.0")
    assert describe_base("someone/wan-finetune", "wan") == Base("someone/wan-finetune", "hub", "someone/wan-finetune")
    snap = tmp_path / "hub" / "models--Wan-AI--Wan2.1-T2V-14B-Diffusers" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    assert describe_base(str(snap), "wan") == Base(str(snap), "hub", "Wan-AI/Wan2.1-T2V-14B-Diffusers", COMMIT, "apache-2.0")
    assert describe_base(str(tmp_path), "wan") == Base(str(tmp_path), "local")


def test_licence_lists_base_and_every_title():
    name, lines = licence_section(Base(HUB_ID, "hub", HUB_ID, None, "apache-2.0"), RIGHTS)
    assert name == "cc-by-3.0-and-studio-contract-42-and-apache-2.0"
    text = "\n".join(lines)
    assert f"Base model `{HUB_ID}`: apache-2.0." in text
    assert "| alpha | CC-BY-3.0 | Blender Foundation | 2030-01-01 |" in text
    assert "| beta | Studio contract 42 | Example Pictures | - |" in text
    name, lines = licence_section(Base("/models/wan", "local"), {"t": {"license": None}})
    assert name == "unrecorded" and "not known to reelora" in "\n".join(lines)
    assert "| t | unrecorded | unrecorded | - |" in lines


def test_local_and_hub_bases_share_the_tested_code(tmp_path):
    """A local directory's usage code is the hub one (run by the slow test below) with only `base` changed."""
    from reelora.models.card import diffusers_usage

    settings = dict(num_frames=5, height=32, width=32, steps=2, guidance=5.0, fps=8.0, negative_prompt=None)
    hub = diffusers_usage(describe_base(HUB_ID, "wan"), "wan", "out/adapter", "exp style, a room", settings).splitlines()
    local = diffusers_usage(describe_base(str(tmp_path), "wan"), "wan", "out/adapter", "exp style, a room", settings).splitlines()
    (diff,) = [i for i, (a, b) in enumerate(zip(hub, local)) if a != b]
    assert len(hub) == len(local) and local[diff].startswith(f"base = {str(tmp_path)!r}  # {tmp_path} (a local directory")
    assert hub[diff] == f"base = {HUB_ID!r}  # the hub repo this adapter was trained on"


def test_shard_rights_keys_are_what_the_manifest_records():
    from reelora.data.manifest import rights_record
    from reelora.data.shards import RIGHTS_KEYS

    assert set(rights_record(type("T", (), {"rights": None})())) == set(RIGHTS_KEYS)


@pytest.mark.slow
def test_card_of_a_tiny_wan_run_runs_as_written(tmp_path, monkeypatch):
    """The card a tiny-wan training run writes: licence, trigger, no hub base; its python block, executed as it
    stands, loads the adapter (which changes the frames) and writes sample.mp4."""
    adapter = train(tmp_path, "tiny-wan")
    card = (adapter / "README.md").read_text()
    meta = front_matter(card)
    assert "base_model" not in meta  # tiny-wan is not a hub id
    assert meta["license"] == "other" and meta["license_name"] == "cc-by-3.0-and-studio-contract-42"
    assert meta["instance_prompt"] == "exp style" and meta["library_name"] == "diffusers"
    assert "| trigger word | `exp style`" in card and "| alpha | CC-BY-3.0 | Blender Foundation | 2030-01-01 |" in card
    assert "LoraLoaderModelOnly" in card and "comfyui_lora.safetensors" in card
    (code,) = code_blocks(card)
    assert "load_model('tiny-wan')" in code and f"adapter = {str(adapter)!r}" in code

    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the card's own code, as a user runs it
    assert ns["frames"].shape == (5, 32, 32, 3)  # configs/tiny-wan.yaml's validation sample settings
    assert (tmp_path / "sample.mp4").stat().st_size > 0
    off: dict = {}
    weak = code.replace("set_adapters('reelora', 1.0)", "set_adapters('reelora', 0.0)")
    assert weak != code
    exec(compile(weak, "README.md", "exec"), off)
    assert np.abs(ns["frames"] - off["frames"]).mean() > 1e-3  # the adapter it loaded is the trained one


@pytest.mark.slow
def test_card_of_a_hub_base_runs_as_written_from_the_hf_cache(tmp_path):
    """Trained on a folder of the HF cache, the card names the hub id and commit; its python block, saved as a
    script and run in a fresh process offline, loads that base from the cache by hub id and writes sample.mp4."""
    import av

    from reelora.models.registry import load_model

    hub = tmp_path / "hub"
    repo = hub / ("models--" + HUB_ID.replace("/", "--"))
    spec, comps = load_model("tiny-wan")
    spec.pipeline(comps).save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    adapter = train(tmp_path, str(repo / "snapshots" / COMMIT))

    card = (adapter / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == HUB_ID and meta["base_model_relation"] == "adapter"
    assert meta["license_name"] == "cc-by-3.0-and-studio-contract-42-and-apache-2.0"
    (code,) = code_blocks(card)
    assert f"base = {HUB_ID!r}" in code and f"revision={COMMIT!r}" in code and "'vae': torch.float32" in code
    script = tmp_path / "use.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with av.open(str(tmp_path / "sample.mp4")) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3)
