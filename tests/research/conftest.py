"""Fixtures for research tools: tiny train/held-out shard sets (tests/media.py frames, the data package's
shard writer) and a fake train.py that writes what the real one does in milliseconds."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.media import render_frame

ROOT = Path(__file__).parents[2]
FRAMES, SIZE = 5, 32


def clip_frames(i: int) -> np.ndarray:
    """5 frames of 32x32: a scene colour per clip (palette_offset) and a moving box, distinct per clip."""
    return np.stack([render_frame(t / 8 + i * 0.37, SIZE, SIZE, palette_offset=i) for t in range(FRAMES)])


def write_tiny_shards(out: Path, n: int, titles=("alpha", "beta"), prefix: str = "c", offset: int = 0) -> Path:
    """A `reelora shards build`-layout directory (index.json + webdataset tars) of n tiny clips."""
    from reelora.data.shards import write_index, write_shard
    from reelora.data.video import encode_clip

    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in range(0, n, 4):
        samples = []
        for i in range(s, min(n, s + 4)):
            mp4 = encode_clip(clip_frames(offset + i), fps=8)
            key = f"{prefix}{i:04d}"
            meta = {"key": key, "caption": f"exp style, scene {i % 3}", "title_id": titles[i % len(titles)],
                    "num_frames": FRAMES, "width": SIZE, "height": SIZE, "fps": 8,
                    "clip_sha256": hashlib.sha256(mp4).hexdigest()}
            samples.append({"__key__": key, "mp4": mp4, "json": json.dumps(meta).encode()})
        entries.append(write_shard(out / f"shard-{s // 4:06d}.tar", samples))
    write_index(out, entries)
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("research-data")
    return {"train": write_tiny_shards(root / "train", 8, titles=("alpha", "beta", "gamma", "delta")),
            "heldout": write_tiny_shards(root / "heldout", 2, titles=("omega",), prefix="h", offset=50)}


FAKE_TRAIN = r'''
"""A stand-in for train.py: parses the same overrides, writes metrics.jsonl and a LoRA safetensors."""
import json, os, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import save_file

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
rank, out = int(args.get("lora.rank", 4)), Path(args["train.output_dir"])
seed = int(args.get("train.seed", 0))
noise = float(os.environ.get("FAKE_NOISE", "0"))  # held-out noise sd: what --seeds must average out
index = Path(args.get("data.shards", "")) / "index.json"
num = json.loads(index.read_text())["num_samples"] if index.is_file() else 0
draw = noise * np.random.default_rng([seed, rank, num]).standard_normal()
fail = os.environ.get("FAKE_FAIL_RANK")
calls = out / "calls.txt"
out.mkdir(parents=True, exist_ok=True)
with open(calls, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
if fail and int(fail) == rank:
    print("step 1: loss 1.0")
    print("[rank 0] error: simulated out of memory at step 2", file=sys.stderr)
    sys.exit(1)
steps = int(args.get("train.max_steps", 3))
(out / "logs").mkdir(exist_ok=True)
with open(out / "logs" / "metrics.jsonl", "a") as f:
    for s in range(1, steps + 1):
        # converged after step 3 unless FAKE_FALLING (an undertrained run: train loss still going down)
        t = s if os.environ.get("FAKE_FALLING") else min(s, 3)
        f.write(json.dumps({"step": s, "train/loss": 1.0 / (t * rank), "train/step_time": 0.01 * rank,
                            "train/peak_mem_gb": 0.1 * rank}) + "\n")
    # sweep: loss falls with rank; sufficiency: an exact power law in the number of clips, L = 2 / n + 1
    val = (1.0 + 2.0 / num if num else 1.0 / rank + 0.5) + draw
    f.write(json.dumps({"step": steps, "val/loss_q0.1": val - 0.1, "val/loss_q0.9": val + 0.1, "val/loss": val}) + "\n")
(out / "adapter").mkdir(exist_ok=True)
save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": np.zeros((rank, 16), np.float32),
           "transformer.blocks.0.attn1.to_q.lora_B.weight": np.zeros((16, rank), np.float32)},
          str(out / "adapter" / "pytorch_lora_weights.safetensors"))
'''


@pytest.fixture()
def fake_train(tmp_path) -> Path:
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE_TRAIN)
    return path
