"""Adapter files: formats, untrusted content, and checks against the backbone (no sampling here)."""
from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reelora.models.adapters import AdapterError, parse_lora_arg, read_adapter, validate
from reelora.models.registry import load_model
from tests.models.conftest import LINEAGE, RANK, write_diffusers


class _CreatesSentinel:
    """Unpickling this object creates a file: proof that a loader executed pickle code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_payloads(tmp_path: Path, sentinel: Path) -> dict[str, bytes]:
    raw = pickle.dumps({"transformer.blocks.0.attn1.to_q.lora_A.weight": _CreatesSentinel(str(sentinel))})
    zipped = tmp_path / "zipped.pt"
    torch.save({"w": _CreatesSentinel(str(sentinel))}, zipped)  # torch.save's zip container
    return {"raw": raw, "zip": zipped.read_bytes()}


@pytest.mark.parametrize("name,payload", [
    ("adapter.pt", "zip"), ("adapter.bin", "raw"), ("adapter.ckpt", "zip"),
    ("disguised.safetensors", "raw"), ("disguised_zip.safetensors", "zip"), ("no_extension", "raw"),
])
def test_pickle_files_are_refused_without_unpickling(tmp_path, name, payload):
    sentinel = tmp_path / "SENTINEL"
    data = _malicious_payloads(tmp_path, sentinel)[payload]
    # The payload is live: unpickling it (in another process) really creates the sentinel.
    probe = tmp_path / "probe"
    probe.write_bytes(pickle.dumps(_CreatesSentinel(str(tmp_path / "PROBE_SENTINEL"))))
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(probe)!r}, 'rb'))"], check=True)
    assert (tmp_path / "PROBE_SENTINEL").exists()

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AdapterError) as err:
        read_adapter(path)
    msg = str(err.value)
    assert str(path) in msg and ("pickle" in msg or "safetensors" in msg)
    assert not sentinel.exists(), "the adapter loader executed pickle code"


def test_not_safetensors_garbage_is_refused(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(AdapterError, match="not a safetensors file"):
        read_adapter(path)


def test_diffusers_adapter_read_with_lineage_and_hash(adapters):
    a = read_adapter(adapters["wan"].parent, scale=0.7)  # a directory resolves to pytorch_lora_weights.safetensors
    assert a.path == adapters["wan"] and a.format == "diffusers" and a.scale == 0.7
    assert a.sha256 == hashlib.sha256(adapters["wan"].read_bytes()).hexdigest()
    assert a.lineage["reelora.base_model"] == "tiny-wan"
    assert a.lineage["reelora.config"]["train"]["max_steps"] == 3  # JSON entries are decoded
    assert a.lineage["reelora.titles"] == ["title-001", "title-002"]
    assert a.lineage["reelora.shard_index_sha256"] == LINEAGE["reelora.shard_index_sha256"]
    prov = a.provenance()["lora_config"]
    assert prov["r"] == RANK and prov["lora_alpha"] == 8 and prov["modules"] == 2 * 2 * 4 + 2 * 2


@pytest.mark.parametrize("fmt", ["comfyui", "musubi"])
def test_foreign_formats_convert_to_the_same_weights(adapters, fmt):
    ours = read_adapter(adapters["wan"])
    other = read_adapter(adapters[fmt], family="wan")
    assert other.format == fmt and other.lora_metadata is None  # alpha is folded into the weights
    assert set(other.state_dict) == set(ours.state_dict)
    scaling = 8 / RANK
    for k, v in ours.state_dict.items():
        # alpha / rank lands on lora_A, where our file keeps it in the metadata
        expected = v * scaling if ".lora_A." in k else v
        torch.testing.assert_close(other.state_dict[k], expected)


def test_nan_and_inf_are_refused_naming_the_key(tmp_path, adapters):
    sd = load_file(str(adapters["wan2"]))
    key = "transformer.blocks.1.attn2.to_v.lora_B.weight"
    for bad in (float("nan"), float("inf")):
        sd[key] = sd[key].clone()
        sd[key][0, 0] = bad
        path = write_diffusers(tmp_path / "bad.safetensors", sd, None)
        with pytest.raises(AdapterError, match=r"blocks\.1\.attn2\.to_v\.lora_B\.weight.*NaN/inf"):
            read_adapter(path)


def test_keys_that_do_not_match_the_backbone_are_refused(tmp_path, adapters):
    _, comps = load_model("tiny-wan", components=("transformer",))
    sd = load_file(str(adapters["wan2"]))
    sd["transformer.blocks.7.attn1.to_q.lora_A.weight"] = sd.pop("transformer.blocks.1.attn1.to_q.lora_A.weight")
    sd["transformer.blocks.7.attn1.to_q.lora_B.weight"] = sd.pop("transformer.blocks.1.attn1.to_q.lora_B.weight")
    a = read_adapter(write_diffusers(tmp_path / "deeper.safetensors", sd, None))
    with pytest.raises(AdapterError, match=r"targets module 'blocks\.7\.attn1\.to_q'.*WanTransformer3DModel does not have"):
        validate(a, comps.transformer, "tiny-wan")

    ltx = read_adapter(adapters["ltx"], family="wan")  # an LTX adapter on a Wan backbone
    with pytest.raises(AdapterError, match="transformer_blocks"):
        validate(ltx, comps.transformer, "tiny-wan")


def test_wrong_shapes_are_refused(tmp_path, adapters):
    _, comps = load_model("tiny-wan", components=("transformer",))
    sd = load_file(str(adapters["wan2"]))
    key = "transformer.blocks.0.ffn.net.2.lora_A.weight"  # Linear(64 -> 32): lora_A must be (rank, 64)
    sd[key] = torch.randn(RANK, 48)
    a = read_adapter(write_diffusers(tmp_path / "shape.safetensors", sd, None))
    with pytest.raises(AdapterError, match=r"'blocks\.0\.ffn\.net\.2' is Linear\(64 -> 32\).*\(4, 48\)"):
        validate(a, comps.transformer, "tiny-wan")

    sd = load_file(str(adapters["wan2"]))
    del sd["transformer.blocks.0.attn1.to_k.lora_B.weight"]
    a = read_adapter(write_diffusers(tmp_path / "half.safetensors", sd, None))
    with pytest.raises(AdapterError, match=r"'blocks\.0\.attn1\.to_k' has no lora_B"):
        validate(a, comps.transformer, "tiny-wan")


def test_unknown_and_mixed_layouts_are_refused(tmp_path):
    t = torch.zeros(4, 32)
    path = tmp_path / "odd.safetensors"
    save_file({"model.layer.weight": t}, str(path))
    with pytest.raises(AdapterError, match="unrecognised key layout"):
        read_adapter(path)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": t,
               "lora_unet_blocks_0_self_attn_q.lora_down.weight": t.clone()}, str(path))
    with pytest.raises(AdapterError, match="mixes key layouts"):
        read_adapter(path)
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": t, "text_encoder.x.lora_A.weight": t.clone()}, str(path))
    with pytest.raises(AdapterError, match="text_encoder"):
        read_adapter(path)


def test_missing_file_and_directory_without_adapter(tmp_path):
    with pytest.raises(AdapterError, match="no such file"):
        read_adapter(tmp_path / "nope.safetensors")
    with pytest.raises(AdapterError, match="pytorch_lora_weights.safetensors"):
        read_adapter(tmp_path)


def test_parse_lora_arg():
    assert parse_lora_arg("out/adapter") == ("out/adapter", 1.0)
    assert parse_lora_arg("out/adapter:0.5") == ("out/adapter", 0.5)
    assert parse_lora_arg("a.safetensors:0") == ("a.safetensors", 0.0)
    assert parse_lora_arg("weird:name.safetensors") == ("weird:name.safetensors", 1.0)


def test_absurd_lora_alpha_or_scale_is_refused_naming_the_file_and_key(tmp_path, adapters):
    import json
    import re

    from safetensors import safe_open

    from tests.models.conftest import ALPHA, to_comfyui

    sd = load_file(str(adapters["wan2"]))
    with safe_open(str(adapters["wan2"]), framework="pt") as f:
        config = {k.removeprefix("transformer."): v for k, v in json.loads(f.metadata()["lora_adapter_metadata"]).items()}
    for alpha, shown in ((1e30, "1e+30"), (float("inf"), "inf"), (-1e6, "-1e+06")):
        path = write_diffusers(tmp_path / "alpha.safetensors", sd, {**config, "lora_alpha": alpha})
        with pytest.raises(AdapterError, match=rf"{path}.*'transformer\.lora_alpha' = {re.escape(shown)} with r = {RANK}"):
            read_adapter(path)
    comfy = write_diffusers(tmp_path / "comfy.safetensors", to_comfyui(sd, 1e30), None)
    with pytest.raises(AdapterError, match=rf"{comfy}: tensor 'diffusion_model\..*\.alpha' = 1e\+30 with rank {RANK}"):
        read_adapter(comfy, family="wan")
    for scale in (float("nan"), 1e30):
        with pytest.raises(AdapterError, match=rf"{adapters['wan2']}: scale {re.escape(f'{scale:g}')} is out of range"):
            read_adapter(adapters["wan2"], scale)
    assert read_adapter(write_diffusers(tmp_path / "ok.safetensors", sd, {**config, "lora_alpha": ALPHA}), -2.0).scale == -2.0
