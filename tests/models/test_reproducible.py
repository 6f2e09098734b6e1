"""`reelora sample` gives the same frames, bit for bit, in another process on the same machine (issue 13).

Without `reproducible_math` this failed: a process given another thread budget (here 3 intra-op threads,
as a launcher's OMP_NUM_THREADS or a CPU set does) split GELU's elementwise work differently, a few pixels
moved by one level and x264 spread that further (measured with `--no-deterministic`: decoded frame 6 differed
by 2/255 here; with the prompt "a red fox", frames 1 and 8 by up to 5/255).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from reelora.models import media

# The command: tiny-wan, seed 3, 9 frames of 64x64, 2 steps, an adapter.
ARGS = ["--model", "tiny-wan", "--prompt", "a red fox in the snow", "--seed", "3", "--num-frames", "9",
        "--height", "64", "--width", "64", "--steps", "2", "--quiet", "--no-contact-sheet"]
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_DYNAMIC", "MKL_CBWR")


def reelora_command() -> list[str]:
    """`reelora` as installed beside this Python (the documented command), else `python -m reelora`."""
    script = Path(sys.executable).with_name("reelora")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "reelora"]


def test_cli_frames_are_bitwise_identical_across_processes(adapters, tmp_path):
    plain = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    plain.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # The second process gets another thread budget; MKL_DYNAMIC=FALSE lets torch take 3 threads on any box.
    envs = {"a": plain, "b": {**plain, "OMP_NUM_THREADS": "3", "MKL_DYNAMIC": "FALSE"}}
    procs = {k: subprocess.Popen([*reelora_command(), "sample", *ARGS, "--lora", str(adapters["wan"]),
                                  "--out", str(tmp_path / k)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, env in envs.items()}
    outs = {k: p.communicate(timeout=300) for k, p in procs.items()}
    for k, p in procs.items():
        assert p.returncode == 0, outs[k][1][-2000:]
    clips = {k: Path(outs[k][0].strip()) for k in procs}
    assert clips["a"].name == clips["b"].name == "000-a-red-fox-in-the-snow.mp4"
    a, b = (media.read_mp4(clips[k])[0] for k in ("a", "b"))
    assert a.shape == (9, 64, 64, 3) and a.std() > 5  # a real clip, not a constant frame
    diff = np.abs(a.astype(int) - b.astype(int)).reshape(len(a), -1).max(axis=1)
    assert not diff.any(), f"decoded frames differ between processes, per-frame max |diff|: {diff.tolist()}"
    assert media.read_provenance(clips["a"])["deterministic"] is True
