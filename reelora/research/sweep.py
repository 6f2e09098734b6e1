"""`reelora sweep`: one training run per LoRA rank, then a side-by-side comparison.

Each rank trains in its own subprocess of `train.py` (so a crash, OOM or bad config in one rank cannot
take the others down) into `OUT/rank-R/`. A finished rank leaves `OUT/rank-R/sweep_run.json`; a rerun
skips it and resumes unfinished ranks from their latest checkpoint (`train.resume=latest`).
The comparison reads what train.py wrote: `logs/metrics.jsonl` (train loss, step time, held-out loss at
the validation quantiles) and `adapter/pytorch_lora_weights.safetensors` (parameter count, file size).

The run/summary helpers here are shared with `reelora sufficiency`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from reelora.models.lora import DIFFUSERS_FILE

ADAPTER_FILE = f"adapter/{DIFFUSERS_FILE}"
METRICS_FILE = "logs/metrics.jsonl"
DONE_FILE = "sweep_run.json"  # written after a successful run: its presence means "skip on rerun"


# ---------------------------------------------------------------------------------------------------------
# Config and command lines


def default_train_script() -> str:
    """`train.py` in the current directory, else the one at the root of this checkout."""
    here = Path("train.py")
    if here.is_file():
        return str(here)
    return str(Path(__file__).resolve().parents[2] / "train.py")


def load_checked_config(config: str | None, overrides: list[str]):
    """Validate the config + overrides up front (errors name the file and key), return the Config."""
    from reelora.train.config import ConfigError, load_config

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def override_keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].strip() for o in overrides if "=" in o}


def validation_overrides(cfg, overrides: list[str], log=print) -> list[str]:
    """Make sure every run ends with a validation (the held-out loss the comparison needs)."""
    extra = []
    if not cfg.validation.every:
        extra.append(f"validation.every={cfg.train.max_steps}")
    if cfg.validation.shards is None:
        log("warning: validation.shards is null, so 'held-out' loss is measured on training clips "
            "(set validation.shards=DIR to a held-out shard directory for a real held-out loss)")
    return extra


def launch_prefix(launch: str | None) -> list[str]:
    """The launcher tokens before the script: default this Python; e.g. 'accelerate launch --multi_gpu ...'."""
    if not launch:
        return [sys.executable]
    tokens = shlex.split(launch)
    if not tokens:
        raise ValueError("--launch: empty command")
    return tokens


def train_command(prefix: list[str], script: str, config: str | None, overrides: list[str]) -> list[str]:
    cmd = [*prefix, script]
    if config:
        cmd += ["--config", config]
    return cmd + list(overrides)


# ---------------------------------------------------------------------------------------------------------
# Running


def run_settings(config: str | None, overrides: list[str]) -> dict:
    """What makes a finished run reusable: the config file's content and the overrides (not the launcher)."""
    import hashlib

    text = Path(config).read_bytes() if config else b""
    return {"config_sha256": hashlib.sha256(text).hexdigest(), "overrides": list(overrides)}


def run_training(cmd: list[str], out_dir: Path, label: str, log=print, timeout: float | None = None,
                 env: dict | None = None, settings: dict | None = None) -> dict:
    """Run one training subprocess with its output in OUT_DIR/train.log; never raises for a failed run.

    A run finished earlier with the same `settings` is skipped; one finished with other settings raises
    ValueError (its results would be mixed into this comparison).

    Returns:
        {"status": "done"|"skipped"|"failed", "returncode", "seconds", "log", "reason" (failed only)}.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / DONE_FILE
    log_path = out_dir / "train.log"
    if done.is_file() and (out_dir / ADAPTER_FILE).is_file():
        prev = json.loads(done.read_text())
        if settings is not None and prev.get("settings") != settings:
            raise ValueError(f"{out_dir} holds a finished run with other settings (config file or overrides differ; "
                             f"see {done}): choose another --out, or delete {out_dir} to retrain it")
        log(f"[{label}] already finished ({done}); skipping")
        return {**prev, "status": "skipped", "log": str(log_path)}
    log(f"[{label}] training -> {out_dir} (log: {log_path})")
    log(f"[{label}] $ {shlex.join(cmd)}")
    started = time.perf_counter()
    with open(log_path, "a") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {shlex.join(cmd)}\n")
        f.flush()
        rc, reason = _run_process_group(cmd, f, timeout, {**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    result = {"returncode": rc, "seconds": round(seconds, 3), "log": str(log_path), "command": cmd, "settings": settings}
    if rc == 0 and not (out_dir / ADAPTER_FILE).is_file():
        reason = f"exited 0 but wrote no {out_dir / ADAPTER_FILE}"
    if rc != 0 or reason:
        reason = reason or f"exit code {rc}: {failure_reason(log_path)}"
        log(f"[{label}] FAILED after {seconds:.1f}s: {reason} (log: {log_path})")
        return {**result, "status": "failed", "reason": reason}
    done.write_text(json.dumps(result, indent=2) + "\n")
    log(f"[{label}] done in {seconds:.1f}s")
    return {**result, "status": "done"}


def _run_process_group(cmd: list[str], log_file, timeout: float | None, env: dict) -> tuple[int | None, str | None]:
    """Run `cmd` in its own process group (a launcher's workers included) -> (returncode, failure reason).

    On timeout or Ctrl-C the whole group gets SIGTERM, so train.py checkpoints and exits (a rerun resumes
    it), then SIGKILL if it has not exited within a minute. Ctrl-C is re-raised after the group is gone.
    """
    import signal

    try:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    except OSError as exc:  # launcher not found, not executable, ...
        return None, f"could not start {cmd[0]!r}: {exc}"

    def stop() -> None:
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    try:
        return proc.wait(timeout), None
    except subprocess.TimeoutExpired:
        stop()
        return proc.returncode, f"timed out after {timeout:g}s (stopped; a rerun resumes from its last checkpoint)"
    except KeyboardInterrupt:
        stop()
        raise


def failure_reason(log_path: Path, max_chars: int = 300) -> str:
    """The most telling line of a failed run's log: the last line that says error, else the last line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    lines = [ln for ln in lines if not ln.startswith("=== ")]
    if not lines:
        return "no output"
    for ln in reversed(lines):
        low = ln.lower()
        if "error" in low or "exception" in low or "killed" in low:
            return ln[:max_chars]
    return lines[-1][:max_chars]


# ---------------------------------------------------------------------------------------------------------
# Reading a finished run


def read_metrics(out_dir: Path) -> list[dict]:
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for ln in path.read_text().splitlines():
        ln = ln.strip()
        if ln:
            try:
                records.append(json.loads(ln))
            except ValueError:
                continue  # a line cut short by a crash
    return records


def summarize_run(out_dir: Path) -> dict:
    """Final held-out loss (mean and per quantile), train loss curve, step time, adapter size of one run.

    A resumed run's log may repeat steps; the last record of each step wins.
    """
    train: dict[int, dict] = {}
    val: dict[int, dict] = {}
    for rec in read_metrics(out_dir):
        step = int(rec.get("step", -1))
        if "train/loss" in rec:
            train[step] = rec
        if "val/loss" in rec:
            val[step] = rec
    steps = sorted(train)
    summary: dict = {
        "steps": steps[-1] if steps else 0,
        "train_curve": [[s, train[s]["train/loss"]] for s in steps],
        "final_train_loss": train[steps[-1]]["train/loss"] if steps else None,
        "val_curve": [[s, val[s]["val/loss"]] for s in sorted(val)],
        "heldout_loss": None, "heldout_quantiles": {},
    }
    if val:
        last = val[max(val)]
        summary["heldout_loss"] = last["val/loss"]
        summary["heldout_quantiles"] = {k.split("loss_q", 1)[1]: v for k, v in last.items() if k.startswith("val/loss_q")}
    times = [train[s]["train/step_time"] for s in steps if "train/step_time" in train[s]]
    # The first step pays for lazy init and allocator warm-up: leave it out when there are others.
    summary["step_time_s"] = statistics.median(times[1:] if len(times) > 1 else times) if times else None
    mem = [train[s].get("train/peak_mem_gb") for s in steps if train[s].get("train/peak_mem_gb") is not None]
    summary["peak_mem_gb"] = max(mem) if mem else None
    summary.update(adapter_stats(out_dir / ADAPTER_FILE))
    return summary


def adapter_stats(path: Path) -> dict:
    """Trainable LoRA parameters (sum of tensor sizes) and file bytes of a safetensors adapter."""
    if not path.is_file():
        return {"adapter_params": None, "adapter_bytes": None}
    from safetensors import safe_open

    params = 0
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            params += math.prod(f.get_slice(key).get_shape())
    return {"adapter_params": params, "adapter_bytes": path.stat().st_size}


# ---------------------------------------------------------------------------------------------------------
# The sweep


def parse_ranks(text: str) -> list[int]:
    try:
        ranks = [int(r) for r in text.replace(" ", "").split(",") if r]
    except ValueError:
        raise ValueError(f"--ranks: expected comma-separated integers like 4,8,16, got {text!r}") from None
    if not ranks or any(r < 1 for r in ranks):
        raise ValueError(f"--ranks: every rank must be >= 1, got {text!r}")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"--ranks: duplicate rank in {text!r}")
    return ranks


def alpha_for(rank: int, mode: str, fixed_alpha: float) -> float:
    """equal: alpha = rank (scale alpha/rank = 1 at every rank); fixed: the same alpha for every rank."""
    if mode == "equal":
        return float(rank)
    if mode == "fixed":
        return float(fixed_alpha)
    raise ValueError(f"--alpha-mode: {mode!r} is not one of equal, fixed")


def run_sweep(args: argparse.Namespace, log=print) -> dict:
    ranks = parse_ranks(args.ranks)
    overrides = list(args.overrides)
    keys = override_keys(overrides)
    for forbidden in ("lora.rank", "train.output_dir"):
        if forbidden in keys:
            raise ValueError(f"override {forbidden}: set by the sweep (use --ranks / --out), do not override it")
    mode = args.alpha_mode or ("fixed" if "lora.alpha" in keys or args.alpha is not None else "equal")
    if args.config and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config: {args.config} not found")
    cfg = load_checked_config(args.config, overrides)
    fixed_alpha = args.alpha if args.alpha is not None else cfg.lora.alpha
    overrides += validation_overrides(cfg, overrides, log)
    script = args.train_script or default_train_script()
    if not Path(script).is_file():
        raise FileNotFoundError(f"--train-script: {script} not found")
    prefix = launch_prefix(args.launch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs = []
    for i, rank in enumerate(ranks):
        alpha = alpha_for(rank, mode, fixed_alpha)
        run_dir = out / f"rank-{rank}"
        run_over = [o for o in overrides if not o.startswith("lora.alpha=")]
        run_over += [f"lora.rank={rank}", f"lora.alpha={alpha:g}", f"train.output_dir={run_dir}"]
        if "train.resume" not in keys:
            run_over.append("train.resume=latest")  # continue a rank that was interrupted
        label = f"rank {rank} ({i + 1}/{len(ranks)})"
        status = run_training(train_command(prefix, script, args.config, run_over), run_dir, label, log,
                              timeout=args.timeout, settings=run_settings(args.config, run_over))
        entry = {"rank": rank, "alpha": alpha, "output_dir": str(run_dir), **status}
        if status["status"] != "failed":
            entry.update(summarize_run(run_dir))
            if entry["heldout_loss"] is not None:
                log(f"[{label}] held-out loss {entry['heldout_loss']:.5f}, adapter {entry['adapter_params']} params")
        runs.append(entry)

    result = {"config": args.config, "overrides": list(args.overrides), "alpha_mode": mode,
              "launch": shlex.join(prefix), "train_script": script, "ranks": ranks, "runs": runs,
              "heldout_is_training_data": cfg.validation.shards is None}
    ok = [r for r in runs if r["status"] != "failed" and r.get("heldout_loss") is not None]
    result["best_rank"] = min(ok, key=lambda r: r["heldout_loss"])["rank"] if ok else None
    result["smallest_rank_within_1pct"] = smallest_within(ok, 0.01)
    result["failed"] = [{"rank": r["rank"], "reason": r["reason"], "log": r["log"]} for r in runs if r["status"] == "failed"]
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sweep.md").write_text(render_markdown(result))
    plot_sweep(result, out / "sweep.png")
    log(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}")
    return result


def smallest_within(runs: list[dict], tolerance: float) -> int | None:
    """The lowest rank whose held-out loss is within `tolerance` (relative) of the best one: often the pick."""
    if not runs:
        return None
    best = min(r["heldout_loss"] for r in runs)
    return min(r["rank"] for r in runs if r["heldout_loss"] <= best * (1 + tolerance))


def _fmt(v, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def _size(n) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def render_markdown(result: dict) -> str:
    runs = result["runs"]
    quantiles = sorted({q for r in runs for q in r.get("heldout_quantiles", {})}, key=float)
    lines = ["# LoRA rank sweep", ""]
    lines.append(f"Config `{result['config']}`, overrides `{' '.join(result['overrides']) or '(none)'}`, "
                 f"alpha mode **{result['alpha_mode']}**, launcher `{result['launch']}`.")
    if result.get("heldout_is_training_data"):
        lines.append("")
        lines.append("**Note:** `validation.shards` was not set, so the \"held-out\" loss is measured on training clips.")
    lines += ["", "| rank | alpha | status | held-out loss | " + " | ".join(f"q{q}" for q in quantiles)
              + (" | " if quantiles else "") + "final train loss | steps | step time (s) | adapter params | adapter size |",
              "|" + "---|" * (9 + len(quantiles))]
    for r in runs:
        best = " **(best)**" if r["rank"] == result.get("best_rank") else ""
        qs = " | ".join(_fmt(r.get("heldout_quantiles", {}).get(q)) for q in quantiles)
        params = r.get("adapter_params")
        lines.append(f"| {r['rank']}{best} | {r['alpha']:g} | {r['status']} | {_fmt(r.get('heldout_loss'), '.5f')} | "
                     + (qs + " | " if quantiles else "")
                     + f"{_fmt(r.get('final_train_loss'))} | {r.get('steps', '—')} | {_fmt(r.get('step_time_s'), '.3f')} | "
                     f"{'—' if params is None else f'{params:,}'} | {_size(r.get('adapter_bytes'))} |")
    if result.get("best_rank") is not None:
        lines += ["", f"Lowest held-out loss: rank {result['best_rank']}; smallest rank within 1% of it: "
                  f"rank {result['smallest_rank_within_1pct']}."]
    if result["failed"]:
        lines += ["", "## Failed ranks", ""]
        for f in result["failed"]:
            lines.append(f"- rank {f['rank']}: {f['reason']} (log: `{f['log']}`)")
    lines += ["", "Held-out loss: mean flow-matching loss at the validation timestep quantiles (fixed noise) at the "
              "last validation; lower is better. Step time: median seconds per optimizer step (first step excluded).",
              "Loss curves: `sweep.png`.", ""]
    return "\n".join(lines)


def plot_sweep(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in result["runs"]:
        curve = r.get("train_curve") or []
        if curve:
            ax1.plot([s for s, _ in curve], [v for _, v in curve], label=f"rank {r['rank']} train")
        val = r.get("val_curve") or []
        if val:
            ax1.plot([s for s, _ in val], [v for _, v in val], "o--", color=ax1.lines[-1].get_color() if curve else None,
                     label=f"rank {r['rank']} held-out")
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.set_title("loss per rank")
    if ax1.lines:
        ax1.legend(fontsize=8)
    ok = sorted((r for r in result["runs"] if r.get("heldout_loss") is not None), key=lambda r: r["rank"])
    if ok:
        ax2.plot([r["rank"] for r in ok], [r["heldout_loss"] for r in ok], "o-")
        ax2.set_xscale("log", base=2)
        ax2.set_xticks([r["rank"] for r in ok], [str(r["rank"]) for r in ok])
    ax2.set_xlabel("LoRA rank"), ax2.set_ylabel("final held-out loss"), ax2.set_title("held-out loss vs rank")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# CLI


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by sweep and sufficiency: config, launcher, script, timeout, overrides."""
    p.add_argument("--config", required=True, help="training YAML config (as for train.py --config), e.g. configs/tiny-wan.yaml")
    p.add_argument("--out", required=True, help="output directory: one sub-directory per run plus the report files")
    p.add_argument("--launch", default=None, metavar="CMD",
                   help="launcher put before the training script, e.g. \"accelerate launch --multi_gpu --num_processes 2 "
                   "--main_process_port 29511\" (default: this Python interpreter, one process)")
    p.add_argument("--train-script", default=None, metavar="PATH",
                   help="training script (default: ./train.py, else the train.py of this checkout)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a run that takes longer than this and report it as failed (default: no limit)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides applied to every run, e.g. train.max_steps=500 validation.shards=DIR "
                   "(see `python train.py --help` for the keys)")


def _cmd(args: argparse.Namespace) -> int:
    result = run_sweep(args)
    return 1 if result["failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="train one adapter per LoRA rank and compare them (held-out loss, curves, size, speed)",
        description="Train one LoRA adapter per rank (a train.py subprocess each, in OUT/rank-R/), then compare "
        "final held-out loss (mean and per validation timestep quantile), train loss curves, adapter parameters "
        "and file size, and step time. Writes OUT/sweep.json, OUT/sweep.md (table) and OUT/sweep.png (loss curves). "
        "Rerunning skips finished ranks and resumes interrupted ones from their checkpoints. A failed rank is "
        "reported (reason and log path) and the others still run; the exit code is then 1. "
        "Validation is forced on at the last step when validation.every is 0; set validation.shards to a held-out "
        "shard directory so the loss is really held out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ranks", required=True, help="comma-separated LoRA ranks, e.g. 4,8,16")
    p.add_argument("--alpha-mode", choices=("equal", "fixed"), default=None,
                   help="equal: lora.alpha = rank (same alpha/rank scale for every rank); fixed: one alpha for all "
                   "ranks (--alpha, else lora.alpha from the config/overrides). Default: equal, or fixed when "
                   "--alpha or a lora.alpha override is given")
    p.add_argument("--alpha", type=float, default=None, help="the alpha used by --alpha-mode fixed")
    add_training_arguments(p)
    p.set_defaults(func=_cmd)
