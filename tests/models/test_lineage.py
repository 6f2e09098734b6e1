"""Who gets paid (an adapter's shares per title and rights holder) and what a takedown must reach (lineage scan)."""
from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import save_file

from reelora.cli import main as reelora_main
from reelora.models.lineage import UNRECORDED, scan, shares_of
from reelora.models.lora import read_lineage

# tests/models/test_trained_adapter.py's run: 6 clips of 5 frames at 8 fps (0.625 s), titles alpha, beta, gamma
# in turn; alpha and gamma belong to Holder A, beta to Holder B
THIRD, TWO_THIRDS = 0.333333, 0.666667
SHARES = {
    "basis": "seconds", "clips": 6, "seconds": 3.75,
    "titles": {"alpha": {"clips": 2, "seconds": 1.25, "share": THIRD, "rights_holder": "Holder A"},
               "beta": {"clips": 2, "seconds": 1.25, "share": THIRD, "rights_holder": "Holder B"},
               "gamma": {"clips": 2, "seconds": 1.25, "share": THIRD, "rights_holder": "Holder A"}},
    "holders": {"Holder A": {"clips": 4, "seconds": 2.5, "share": TWO_THIRDS, "titles": ["alpha", "gamma"]},
                "Holder B": {"clips": 2, "seconds": 1.25, "share": THIRD, "titles": ["beta"]}},
}


def test_shares_of_clip_metadata():
    metas = [{"title_id": "a", "num_frames": 81, "fps": 16, "rights_holder": "H"},
             {"title_id": "a", "num_frames": 81, "fps": 16.0, "rights_holder": "H"},
             {"title_id": "b", "num_frames": 16, "fps": 16}]  # no rights recorded
    s = shares_of(metas)
    assert s["clips"] == 3 and s["seconds"] == 11.125
    assert s["titles"]["a"] == {"clips": 2, "seconds": 10.125, "share": 0.910112, "rights_holder": "H"}
    assert s["holders"][UNRECORDED] == {"clips": 1, "seconds": 1.0, "share": 0.089888, "titles": ["b"]}


def test_trained_adapter_records_and_prints_its_shares(trained, capsys):
    for name in ("pytorch_lora_weights.safetensors", "comfyui_lora.safetensors"):
        assert read_lineage(trained / name)["shares"] == SHARES
    assert reelora_main(["lineage", str(trained), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == SHARES
    assert reelora_main(["lineage", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "6 clips, 3.75 s" in out
    assert [line.split() for line in out.splitlines() if line.startswith(("Holder", "alpha"))] == [
        ["Holder", "A", "4", "2.50", "66.67%"], ["Holder", "B", "2", "1.25", "33.33%"],
        ["alpha", "2", "1.25", "33.33%", "Holder", "A"]]
    assert reelora_main(["lineage", str(trained.parent / "nothing-here")]) == 2
    assert "no such file" in capsys.readouterr().err


def _cache_entry(root, key: str, n: int) -> None:
    """A latent entry the way train/cache.py writes one (its header records the clip key)."""
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / "tiny.json").write_text("{}")
    d = root / "latents" / f"{n:02x}"
    d.mkdir(parents=True, exist_ok=True)
    save_file({"latents": torch.zeros(1)}, d / f"{n:02x}{key}.safetensors", metadata={"kind": "latents", "key": key})


def test_scan_and_takedown_list_everything_made_from_a_title(trained, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(trained.parent, runs / "styled")  # its adapter/ (diffusers + ComfyUI files), checkpoints, logs
    shards = tmp_path / "shards"
    shutil.copytree(trained.parent.parent / "shards", shards)
    # a run still training on the same shards: its checkpoint names them in state.json
    ckpt = runs / "later" / "checkpoints" / "step-000002"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"config": {"data.shards": str(shards)}}))
    (runs / "other" / "checkpoints" / "step-000001").mkdir(parents=True)  # trained on shards without the title
    (runs / "other" / "checkpoints" / "step-000001" / "state.json").write_text(
        json.dumps({"config": {"data.shards": str(tmp_path / "elsewhere")}}))
    for n, key in enumerate(["alpha_0000000", "alpha_0000040", "beta_0000000", "alpha_beta_0000000"]):
        _cache_entry(runs / "cache", key, n)

    uses = scan(runs, "alpha")
    assert [(u.kind, os.path.relpath(u.path, runs), u.clips) for u in uses] == [
        ("cache", "cache", 2),
        ("checkpoint", "later/checkpoints/step-000002", None),
        ("adapter", "styled/adapter/comfyui_lora.safetensors", 2),
        ("adapter", "styled/adapter/pytorch_lora_weights.safetensors", 2),
        ("checkpoint", "styled/checkpoints/step-000003", None),  # the run's last checkpoint, beside its adapter
    ]
    assert "1.25 s, 33.33% of its training footage (step 3)" in uses[3].detail
    assert uses[4].detail == "its run's adapter used the title"
    assert [u.kind for u in scan(runs, "alpha_beta")] == ["cache"]
    assert scan(runs, "delta") == []

    assert reelora_main(["lineage", "scan", str(runs), "--title", "beta"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"5 things under {runs} were made from title 'beta'") and "beta_0000000" not in out

    # the takedown removes the clips from the shards and lists what it must also reach
    assert reelora_main(["shards", "takedown", str(shards), "--title", "alpha", "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("removed 2 clips of 'alpha'")
    assert "5 things under" in out and "later/checkpoints/step-000002: trained on" in out
    assert "before the title was taken down" in out  # the shards no longer hold it, their record says when
