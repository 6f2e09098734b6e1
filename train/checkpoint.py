"""Resumable checkpoints: only what resume needs, written atomically, rotated after completion.

OUTPUT/checkpoints/step-NNNNNN/
    lora.safetensors         trainable LoRA weights (peft names), never the frozen base
    optimizer.safetensors    optimizer state tensors, keyed "<param index>.<name>"
    state.json               step, samples consumed (data position), LR scheduler, optimizer param groups
    COMPLETE                 written last; a folder without it is never resumed from

A save writes into checkpoints/.tmp-step-NNNNNN-PID/ and renames it when complete. A save that fails
(full disk, any OSError) removes that folder and raises CheckpointError naming the checkpoint folder,
leaving the previous complete checkpoint as it was; a save cut short by a crash leaves the folder behind,
and the next run removes it when it starts (remove_partial).

Everything is safetensors + JSON: resume never unpickles anything.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"step-(\d{6,})")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from or written; the message names the folder."""


def write_error(path: Path, exc: BaseException, what: str, then: str = "resume with train.resume=latest") -> str:
    """'cannot write WHAT PATH: no space left on device (free space, then THEN)' for an OSError or a safetensors
    write error, else the error's own text.

    safetensors' writer reports a full disk as SafetensorError text ("os error 28"), not as an OSError.
    """
    text = str(exc)
    full = getattr(exc, "errno", None) == errno.ENOSPC or "os error 28" in text or "No space left" in text
    why = f"no space left on device (free space, then {then})" if full else text
    return f"cannot write {what} {path}: {why}"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_complete(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def latest(output_dir: str | Path) -> Path | None:
    done = list_complete(output_dir)
    return done[-1] if done else None


def save(output_dir: str | Path, step: int, lora: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | dict,
         state: dict, keep_last: int) -> Path:
    """Write checkpoint `step` to a temporary folder, mark it complete, rename it into place, then rotate.

    `optimizer` may be given as its `state_dict()` (under FSDP: the gathered full state, train/parallel.py).

    Raises:
        CheckpointError: a write failed (full disk, permissions...): names the checkpoint folder; the
            temporary folder is removed and earlier checkpoints are untouched.
    """
    from safetensors import SafetensorError

    root = checkpoint_dir(output_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, tmp / "lora.safetensors")
        opt_tensors, opt_scalars, opt_groups = _flatten_optimizer(optimizer)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "optimizer_param_groups": opt_groups,
                                                    "optimizer_scalars": opt_scalars}, indent=2))
        (tmp / MARKER).write_text("ok\n")
        _fsync_dir(tmp)
        if final.exists():  # an older run's same-step folder (e.g. after a crash right after rename): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(write_error(final, exc, f"checkpoint of step {step} to") +
                              f"; earlier checkpoints in {root} are intact") from exc
    except BaseException:  # interrupted mid-save: leave no half folder behind either
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    for old in list_complete(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: str | Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a complete checkpoint: returns (LoRA weights, state dict) and restores `optimizer` in place."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {MARKER} marker)")
    try:
        lora = load_file(path / "lora.safetensors")
        state = json.loads((path / "state.json").read_text())
        opt_tensors = load_file(path / "optimizer.safetensors")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    _restore_optimizer(optimizer, opt_tensors, state.pop("optimizer_scalars", {}), state.pop("optimizer_param_groups"), path)
    return lora, state


def read_state(path: str | Path) -> dict:
    """A complete checkpoint's state.json (step, data position, the config keys it was trained with)."""
    path = Path(path)
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / 'state.json'}: unreadable checkpoint state ({exc})") from exc


def remove_partial(output_dir: str | Path) -> list[Path]:
    """Delete leftover temporary folders from interrupted saves (they are never resumed from)."""
    root = checkpoint_dir(output_dir)
    gone = [p for p in root.glob(".tmp-step-*")] if root.is_dir() else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def _flatten_optimizer(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[dict]]:
    """Optimizer state as safetensors tensors plus JSON scalars, keyed "<param index>.<name>[/<sub>...]".

    Nested dicts (bitsandbytes keeps its 8-bit state under one) become "/"-joined names; Python scalars (its
    int step) stay scalars in JSON, so they come back with their type.
    """
    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors, scalars = {}, {}

    def put(key: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{key}/{k}", v)
        elif torch.is_tensor(value):
            tensors[key] = value.detach().cpu().contiguous()
        else:
            scalars[key] = value

    for idx, st in sd["state"].items():
        for name, value in st.items():
            put(f"{idx}.{name}", value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, scalars, groups


def _restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any], groups: list[dict],
                       path: Path) -> None:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *scalars.items()]:
        idx, name = key.split(".", 1)
        node = state.setdefault(int(idx), {})
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in current] != [len(g["params"]) for g in groups]:
        raise CheckpointError(f"{path}: optimizer has a different parameter layout (another lora.rank/target_modules?)")
    for g in groups:
        for k in ("betas",):
            if k in g and isinstance(g[k], list):
                g[k] = tuple(g[k])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
