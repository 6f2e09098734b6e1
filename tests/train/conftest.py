"""Fixtures for train/ tests: a few tiny clips in WebDataset shards, and their latent/text cache.

Shards are written here with the shard format's writer (reelora.data.shards: KEY.mp4 + KEY.json, index.json)
from generated frames, so these tests do not depend on the ingest pipeline.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import os

import numpy as np
import pytest
import torch

# Bitwise comparisons across processes (golden losses, exact resume) need MKL's alignment-independent
# kernels (MKL_CBWR, read when MKL loads: so they run in train.py subprocesses that inherit this) and a
# fixed thread count. Without it the same run in two processes differs in the last bits now and then,
# which Adam's first steps amplify.
DETERMINISTIC_ENV = {"MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# oneDNN convolutions (the VAE building the fixture cache) are not bitwise stable across processes.
torch.backends.mkldnn.enabled = False

NUM_CLIPS = 6
FRAMES, SIZE = 5, 32


def encode_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "10"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def clip_frames(i: int) -> np.ndarray:
    """A moving gradient whose colour depends on the clip: distinct, smooth, deterministic."""
    t = np.arange(FRAMES)[:, None, None]
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    r = (x * 6 + t * 10 + i * 40) % 256
    g = (y * 6 + i * 70) % 256
    b = ((x + y) * 3 + t * 20 + i * 25) % 256
    return np.stack(np.broadcast_arrays(r, g, b), -1).astype(np.uint8)


def write_shards(out: Path, n: int = NUM_CLIPS, per_shard: int = 4, titles=("alpha", "beta"), prefix: str = "c",
                 rights: dict | None = None, library: dict | None = None) -> Path:
    """rights: title -> extra clip metadata (license, rights_holder...); library: index.json's `library` record."""
    from reelora.data.shards import write_index, write_shard

    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in range(0, n, per_shard):
        samples = []
        for i in range(s, min(n, s + per_shard)):
            mp4 = encode_mp4(clip_frames(i if prefix == "c" else 100 + i))
            meta = {"caption": f"exp style, scene {i % 3}", "title_id": titles[i % len(titles)], "num_frames": FRAMES,
                    "width": SIZE, "height": SIZE, "fps": 8, "clip_sha256": hashlib.sha256(mp4).hexdigest(),
                    **(rights or {}).get(titles[i % len(titles)], {})}
            samples.append({"__key__": f"{prefix}{i:04d}", "mp4": mp4, "json": json.dumps(meta).encode()})
        entries.append(write_shard(out / f"shard-{s // per_shard:06d}.tar", samples))
    write_index(out, entries, {"library": library} if library else None)
    return out


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def cache(shards, tmp_path_factory) -> Path:
    from reelora.train.cache import build_cache

    out = tmp_path_factory.mktemp("cache")
    build_cache(str(shards), "tiny-wan", str(out), progress=False)
    return out


def user_env(**extra: str) -> dict[str, str]:
    """This process's environment minus the test-only MKL/OMP pins: what a user's plain shell has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MKL_", "OMP_"))}
    return {**env, **extra}


def train_py(*args, timeout=300, env=None, pinned=True):
    """Run `python train.py ARGS` in a fresh process.

    env: the whole environment (default: this process's); pinned adds DETERMINISTIC_ENV (golden losses).
    """
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    env = dict(os.environ if env is None else env)
    return subprocess.run([sys.executable, str(root / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=root, env={**env, **(DETERMINISTIC_ENV if pinned else {})})


def launch_cmd(port: int, *args: str) -> list[str]:
    """`accelerate launch --multi_gpu --num_processes 2 ... ARGS`: the documented multi-process form (DDP/FSDP
    over gloo here). ARGS is the script and its arguments, or `-m module ...`."""
    import sys

    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), *args]


def launch(port: int, *args: str, timeout=300, env=None):
    """Run `launch_cmd` to completion in a user's environment (`user_env`: no MKL/OMP pins; torchrun sets
    OMP_NUM_THREADS=1 and train.py sets MKL_CBWR itself)."""
    import subprocess

    root = Path(__file__).parents[2]
    return subprocess.run(launch_cmd(port, *args), cwd=root, capture_output=True, text=True, timeout=timeout,
                          env=user_env(**(env or {})))


def cfg_args(out, shards, cache, *extra) -> list[str]:
    root = Path(__file__).parents[2]
    args = ["--config", str(root / "configs/tiny-wan.yaml"), f"data.shards={shards}", f"train.output_dir={out}",
            "log.progress_bar=false", "validation.every=0"]
    if cache is not None:
        args.append(f"data.cache={cache}")
    return [*args, *extra]


def tiny_cfg(out: Path, shards: Path, cache: Path | None, *overrides: str):
    """The CI config with test paths and quiet logging."""
    from reelora.train.config import load_config

    base = [f"data.shards={shards}", f"train.output_dir={out}", "log.progress_bar=false", "validation.every=0"]
    if cache is not None:
        base.append(f"data.cache={cache}")
    return load_config(Path(__file__).parents[2] / "configs" / "tiny-wan.yaml", [*base, *overrides])


def measure_activations(spec_cls, model_cls, model_config: dict, make_inputs, mixed_precision: str, checkpointing: bool,
                        rank: int, arch_fields: dict):
    """A small transformer with the family's LoRA, set up as training does, measured against train/plan.py's formula.

    Args:
        spec_cls: the family's spec (WanSpec, LTX2Spec): its lora_targets and its training forward.
        make_inputs: () -> (comps, latents, text) for the spec's forward, called once the model is set up (so the
            random draws keep their order).
        arch_fields: plan.Architecture's fields after `transformer` (vae_temporal, ..., structure).

    Returns:
        SimpleNamespace: saved (bytes autograd saves in a forward), peak (CPU allocator peak of a training step),
        stored and backward (the plan's activation estimate), tokens, arch.
    """
    import types

    from reelora.models.lora import attach_lora
    from reelora.train import plan as P

    torch.manual_seed(0)
    model = model_cls(**model_config)
    half = mixed_precision == "bf16"
    if half:  # as training stores the frozen base (LoRA stays fp32, autocast computes in bf16)
        model.to(torch.bfloat16)
    attach_lora(model, rank=rank, alpha=rank, target_modules=list(spec_cls.lora_targets))
    if checkpointing:
        model.enable_gradient_checkpointing()
    comps, latents, text = make_inputs()

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            pred, target = spec_cls().forward(comps, model, latents, torch.randn_like(latents), torch.rand(1), text)
            return ((pred - target) ** 2).mean()

    forward().backward()  # the LoRA gradients exist from here on, as in training after its first step
    saved = P.measure_saved_bytes(forward, model)
    peak = P.measure_peak_bytes(lambda: forward().backward())
    arch = P.Architecture("measured", P._with_defaults(model_cls, model_config), **arch_fields)
    counts = P.count_parameters(arch, rank, None)
    s = P.tokens(arch, tuple(latents.shape[1:]))
    est = P.activation_bytes(arch, counts, s, latents.numel(), rank, half, checkpointing)
    return types.SimpleNamespace(saved=saved, peak=peak, stored=est["stored"], backward=est["backward"], tokens=s, arch=arch)
