"""Helpers shared by the family specs (composition, not inheritance)."""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch


def flow_match_noise(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified-flow noising as Wan and LTX were trained: x_t = (1 - s) x0 + s noise, target = noise - x0.

    `sigmas` is [B]; it is broadcast over the remaining latent dims.
    """
    s = sigmas.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    noisy = (1.0 - s) * latents + s * noise
    return noisy, noise - latents


@contextmanager
def seeded(seed: int):
    """Build modules under a fixed CPU seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def model_index(source: str, revision: str | None = None) -> dict:
    """Read model_index.json from a local diffusers directory or a hub id (offline mode respected)."""
    if is_local(source):
        path = Path(source).expanduser() / "model_index.json"
        if not path.is_file():
            raise FileNotFoundError(f"{source}: not a diffusers model directory (no model_index.json)")
        return json.loads(path.read_text())
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(source, "model_index.json", revision=revision)
    except Exception as exc:  # offline, unknown repo, no network: say which and why
        raise FileNotFoundError(
            f"model {source!r}: not a built-in tiny name, not a local directory, and its model_index.json "
            f"could not be read from the hub cache ({type(exc).__name__}: {exc}). Download it first "
            f"(`huggingface-cli download {source}`) or pass a local diffusers directory."
        ) from exc
    return json.loads(Path(path).read_text())


def load_kwargs(source: str, subfolder: str, revision: str | None) -> dict:
    kw: dict = {"subfolder": subfolder}
    if not is_local(source) and revision:
        kw["revision"] = revision
    return kw


def weights_hash(source: str) -> str | None:
    """A short content hash of a local model directory's weight files, for lineage; None for hub ids."""
    if not is_local(source):
        return None
    h = hashlib.sha256()
    for f in sorted(Path(source).expanduser().rglob("*.safetensors")):
        h.update(f.relative_to(Path(source).expanduser()).as_posix().encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))  # first MiB + size: cheap and changes with any retrain
    return h.hexdigest()[:16]


def count_params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
