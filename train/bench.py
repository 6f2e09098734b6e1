"""What the GPU benchmarks share: timed training steps with their peak memory (benchmarks/ltx2_memory.py,
wan22_memory.py, wan_realsize.py) and the memory scripts' common arguments.

It lives in the package, not in benchmarks/: the benchmarks run as `python3 -P benchmarks/X.py`, which keeps
benchmarks/ off sys.path, so only an installed module (reelora.train.bench) can be shared between them.
"""
from __future__ import annotations

import argparse
import statistics
from time import perf_counter
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from reelora.train.step import StepContext


def memory_parser(doc: str, steps: int) -> argparse.ArgumentParser:
    """The arguments benchmarks/ltx2_memory.py and wan22_memory.py share: the training config, the clip's
    frames/height/width, and the timed steps (`steps` by default); each script adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--frames", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--steps", type=int, default=steps)
    return ap


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously; a clock read alone would miss them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_train_steps(ctx: StepContext, micro_batches: list[dict], steps: int, device: torch.device, *,
                     warmup: int = 1, reset_peak_after_warmup: bool = True,
                     on_step: Callable[[int, float, bool, dict], None] | None = None) -> dict:
    """Run `warmup` untimed then `steps` timed `train_step`s on the same micro-batches (steps numbered from 1).

    Each step is timed between two device synchronisations, so a step's time holds all of its kernels.

    Args:
        reset_peak_after_warmup: reset CUDA's peak-memory counter once the warm-up is done, so `peak_bytes` is
            the timed steps' peak; otherwise it is the peak since the caller last reset it.
        on_step: called after every step with (step, seconds, is_warmup, metrics), e.g. to log progress.

    Returns:
        {"step_times_s": seconds of each timed step, "step_s": their median, "losses": every step's loss,
        warm-up included, "metrics": the last step's metrics, "peak_bytes": torch.cuda.max_memory_allocated
        (None off CUDA)}.
    """
    # Imported here, and train_step looked up at call time: a test may replace it (tests/benchmarks fakes an
    # out-of-memory step), and the parser above stays cheap to import.
    from reelora.train import step as step_module

    cuda = device.type == "cuda"
    times, losses, metrics = [], [], {}
    for step in range(1, warmup + steps + 1):
        synchronize(device)
        if step == warmup + 1 and reset_peak_after_warmup and cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = perf_counter()
        metrics = step_module.train_step(ctx, micro_batches, step)
        synchronize(device)
        dt = perf_counter() - t0
        warm = step <= warmup
        losses.append(metrics["loss"])
        if not warm:
            times.append(dt)
        if on_step is not None:
            on_step(step, dt, warm, metrics)
    return {"step_times_s": times, "step_s": statistics.median(times), "losses": losses, "metrics": metrics,
            "peak_bytes": torch.cuda.max_memory_allocated(device) if cuda else None}
