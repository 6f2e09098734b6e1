"""Metrics out: a local JSONL always, wandb when `log.wandb_project` is set, tqdm on the main process."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch

from reelora.files import write_text_atomic


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated (CUDA), else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def wandb_mode() -> str:
    """WANDB_MODE if set; online with an API key or netrc login; otherwise offline (never prompts)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def keep_until(jsonl: Path, step: int) -> None:
    """Drop records after `step` (written by a run that stopped after its last checkpoint), so a resumed
    run's log holds each step once. A torn last line (killed mid-write) goes too."""
    if not jsonl.is_file():
        return
    kept = []
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    write_text_atomic(jsonl, "".join(kept))


def new_run_id() -> str:
    """A fresh wandb run id (8 lowercase base-36 characters, wandb's own format).

    Ours, not `wandb.util.generate_id`: wandb removed that in 0.28.2.
    """
    import secrets

    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(8))


class MetricLogger:
    def __init__(self, cfg, accelerator, start_step: int = 0):
        self.cfg, self.acc, self.main = cfg, accelerator, accelerator.is_main_process
        self.dir = Path(cfg.train.output_dir) / "logs"
        self.jsonl = None
        self.wandb = None
        self.bar = None
        self._t_last = time.perf_counter()
        if not self.main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        keep_until(self.dir / "metrics.jsonl", start_step)
        self.jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1)
        if cfg.log.wandb_project:
            import wandb

            # A stable id per output dir: a resumed run continues the same wandb run.
            id_file = self.dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else new_run_id()
            write_text_atomic(id_file, run_id)
            self.wandb = wandb.init(project=cfg.log.wandb_project, name=cfg.log.wandb_run_name or Path(cfg.train.output_dir).name,
                                    id=run_id, resume="allow", dir=str(self.dir), mode=wandb_mode(), config=cfg.to_dict())
        if cfg.log.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.max_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict, samples_per_step: int) -> None:
        if not self.main:
            return
        metrics = {**metrics, "samples_per_s": samples_per_step / max(metrics["step_time"], 1e-9),
                   "peak_mem_gb": peak_memory_gb(self.acc.device)}
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", gn=f"{metrics['grad_norm']:.3f}")
        if step % self.cfg.log.every == 0 or step == self.cfg.train.max_steps:
            self._write(step, {f"train/{k}": v for k, v in metrics.items()})

    def log_validation(self, step: int, result: dict) -> None:
        if not self.main or not result:
            return
        scalars = {k: v for k, v in result.items() if k != "samples"}
        self._write(step, {**scalars, "val/samples": [str(p) for p in result.get("samples", [])]})
        if self.wandb is not None and result.get("samples"):
            import wandb

            self.wandb.log({"val/videos": [wandb.Video(str(p), format="mp4") for p in result["samples"]]}, step=step)

    def _write(self, step: int, record: dict) -> None:
        try:
            self.jsonl.write(json.dumps({"step": step, **record}) + "\n")
        except OSError as exc:  # the bare error (e.g. ENOSPC) names no file
            raise OSError(exc.errno, f"{exc.strerror or exc} while writing {self.jsonl.name} at step {step}") from exc
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if not isinstance(v, list)}, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()
