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

import numpy as np

from reelora.models.lora import DIFFUSERS_FILE
from reelora.research.stats import difference_interval, mean_interval, paired_difference_interval

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


def training_seeds(base: int, count: int) -> list[int]:
    """train.seed of each repeat: base, base + 1, ... (another LoRA init, data order and noise; nothing else)."""
    if count < 1:
        raise ValueError(f"--seeds: must be >= 1, got {count}")
    return [base + i for i in range(count)]


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
    check_level(args.level)
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
    if args.style_reference and not Path(args.style_reference).exists():
        raise FileNotFoundError(f"--style-reference: {args.style_reference} not found")
    prefix = launch_prefix(args.launch)
    seeds = training_seeds(cfg.train.seed, args.seeds)
    prompts = args.grid_prompt if args.grid_prompt is not None else list(cfg.validation.prompts)
    grid_seeds = parse_seeds(args.grid_seeds)  # checked before hours of training, used after
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs = []
    total = len(ranks) * len(seeds)
    for i, rank in enumerate(ranks):
        alpha = alpha_for(rank, mode, fixed_alpha)
        for j, seed in enumerate(seeds):
            run_dir = out / f"rank-{rank}" / f"seed-{seed}"
            run_over = [o for o in overrides if not o.startswith(("lora.alpha=", "train.seed="))]
            run_over += [f"lora.rank={rank}", f"lora.alpha={alpha:g}", f"train.seed={seed}", f"train.output_dir={run_dir}"]
            if "train.resume" not in keys:
                run_over.append("train.resume=latest")  # continue a run that was interrupted
            label = f"rank {rank}, seed {seed} ({i * len(seeds) + j + 1}/{total})"
            status = run_training(train_command(prefix, script, args.config, run_over), run_dir, label, log,
                                  timeout=args.timeout, settings=run_settings(args.config, run_over))
            entry = {"rank": rank, "alpha": alpha, "seed": seed, "output_dir": str(run_dir), **status}
            if status["status"] != "failed":
                entry.update(summarize_run(run_dir))
                if entry["heldout_loss"] is not None:
                    log(f"[{label}] held-out loss {entry['heldout_loss']:.5f}, adapter {entry['adapter_params']} params")
            runs.append(entry)

    per_rank = [rank_summary(rank, [r for r in runs if r["rank"] == rank], args.level) for rank in ranks]
    result = {"config": args.config, "overrides": list(args.overrides), "alpha_mode": mode,
              "launch": shlex.join(prefix), "train_script": script, "ranks": ranks, "seeds": seeds, "level": args.level,
              "tolerance": args.tolerance, "runs": runs, "per_rank": per_rank,
              "heldout_is_training_data": cfg.validation.shards is None}
    result["comparison"] = compare_ranks(per_rank, args.tolerance, args.level)
    result["best_rank"] = result["comparison"]["best"]
    result["failed"] = [{"rank": r["rank"], "seed": r["seed"], "reason": r["reason"], "log": r["log"]}
                        for r in runs if r["status"] == "failed"]
    result["grid"] = None
    if args.no_grid:
        log("[grid] skipped (--no-grid)")
    elif not prompts:
        log("[grid] skipped: no prompts (validation.prompts is empty; pass --grid-prompt TEXT)")
    else:
        result["grid"] = sample_grid(cfg, per_rank, prompts, grid_seeds, out, args.style_reference, log)
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sweep.md").write_text(render_markdown(result))
    plot_sweep(result, out / "sweep.png")
    log(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}")
    return result


def check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"--level: must be in (0, 1), e.g. 0.95, got {level}")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ValueError(f"--grid-seeds: expected comma-separated integers like 0,1, got {text!r}") from None
    if not seeds:
        raise ValueError("--grid-seeds: give at least one sampling seed")
    return seeds


def rank_summary(rank: int, runs: list[dict], level: float) -> dict:
    """One rank's seeds -> mean held-out loss and its interval, and the run facts that do not vary with seed."""
    ok = [r for r in runs if r["status"] != "failed" and r.get("heldout_loss") is not None]
    out = {"rank": rank, "alpha": runs[0]["alpha"] if runs else None, "runs": len(runs), "ok": len(ok),
           "losses": [r["heldout_loss"] for r in ok], "by_seed": {r["seed"]: r["heldout_loss"] for r in ok}, "heldout": None, "quantiles": {}, "final_train_loss": None,
           "steps": None, "step_time_s": None, "peak_mem_gb": None, "adapter_params": None, "adapter_bytes": None,
           "adapter": None}
    if not ok:
        return out
    out["heldout"] = mean_interval(out["losses"], level)
    qs = sorted({q for r in ok for q in r.get("heldout_quantiles", {})}, key=float)
    out["quantiles"] = {q: float(np.mean([r["heldout_quantiles"][q] for r in ok if q in r.get("heldout_quantiles", {})]))
                        for q in qs}
    train = [r["final_train_loss"] for r in ok if r.get("final_train_loss") is not None]
    out["final_train_loss"] = float(np.mean(train)) if train else None
    times = [r["step_time_s"] for r in ok if r.get("step_time_s") is not None]
    out["step_time_s"] = float(np.median(times)) if times else None
    mem = [r["peak_mem_gb"] for r in ok if r.get("peak_mem_gb") is not None]
    out["peak_mem_gb"] = max(mem) if mem else None
    out["steps"] = max(r.get("steps") or 0 for r in ok)
    out["adapter_params"], out["adapter_bytes"] = ok[0].get("adapter_params"), ok[0].get("adapter_bytes")
    out["adapter"] = str(Path(ok[0]["output_dir"]) / "adapter")  # the first seed's adapter samples the grid
    return out


def compare_ranks(per_rank: list[dict], tolerance: float, level: float) -> dict:
    """Which ranks the held-out loss can tell apart, and the smallest one worth taking.

    best: lowest mean. Every other rank's difference to it gets an interval (paired by train.seed when the
    two ranks share at least two seeds, else Welch): "worse" when it excludes 0,
    "tied" when it does not (the difference is within run-to-run noise). The pick ("smallest rank within
    `tolerance` of the best") is claimed only when the sweep resolved something, i.e. some rank is worse
    beyond noise; it is the smallest rank that is tied with the best or worse by less than `tolerance` of it.

    Returns:
        {"best", "tied", "worse", "differences": {rank: interval}, "resolved", "pick", "noise_known", "message"}.
    """
    ok = [r for r in per_rank if r["heldout"] is not None]
    out = {"best": None, "tied": [], "worse": [], "differences": {}, "resolved": False, "pick": None,
           "noise_known": False, "message": "no rank finished with a held-out loss"}
    if not ok:
        return out
    best = min(ok, key=lambda r: r["heldout"]["mean"])
    out["best"] = best["rank"]
    out["noise_known"] = all(r["heldout"]["n"] >= 2 for r in ok)
    if len(ok) == 1:
        out["message"] = f"only rank {best['rank']} finished: nothing to compare"
        return out
    if not out["noise_known"]:
        out["message"] = (f"lowest mean held-out loss: rank {best['rank']}, but with one seed per rank there is no "
                          "estimate of run-to-run noise, so no rank is shown better than another; rerun with --seeds 3")
        return out
    for r in ok:
        if r is best:
            continue
        # same train.seed = same data order, noise and validation noise: compare seed by seed when possible
        d = (paired_difference_interval(r.get("by_seed", {}), best.get("by_seed", {}), level)
             or difference_interval(r["losses"], best["losses"], level))
        out["differences"][r["rank"]] = d
        (out["worse"] if d["significant"] and d["difference"] > 0 else out["tied"]).append(r["rank"])
    tied = sorted(out["tied"] + [best["rank"]])
    out["tied"] = tied
    pct = f"{100 * tolerance:g}%"
    if not out["worse"]:
        out["message"] = (f"no rank differs from rank {best['rank']} (lowest mean) beyond run-to-run noise: the sweep "
                          f"cannot tell ranks {', '.join(map(str, tied))} apart at this budget; more seeds or longer "
                          "runs would")
        return out
    out["resolved"] = True
    limit = best["heldout"]["mean"] * tolerance
    near = [r for r in out["worse"] if out["differences"][r]["difference"] <= limit]
    out["pick"] = min(tied + near)
    others = [r for r in tied if r != best["rank"]]
    out["message"] = (f"lowest mean held-out loss: rank {best['rank']}; worse beyond noise: "
                      f"{', '.join(map(str, sorted(out['worse'])))}; "
                      + (f"within noise of it: {', '.join(map(str, others))}" if others else "no other rank within noise of it")
                      + f". Smallest rank within {pct} of the best: rank {out['pick']}")
    return out


def sample_grid(cfg, per_rank: list[dict], prompts: list[str], seeds: list[int], out: Path,
                style_reference: str | None, log=print) -> dict:
    """Sample every prompt x seed from the base model and from each rank's adapter (same settings), write the
    clips to OUT/grid/<row>/ and the grid to OUT/sample_grid.png; with a style reference, each row's style
    distance to it.

    The backbone loads once: every rank's adapter is attached to one Sampler and each row switches to its own
    (the base row to none), which gives the frames a Sampler per row would. A row that fails to sample is
    reported, not raised: the training runs it follows are worth more.
    """
    rows = [("base", None)] + [(f"rank {r['rank']}", r["adapter"]) for r in per_rank if r.get("adapter")]
    ref = None
    if style_reference:
        from reelora.demo.style import style_stats

        ref = style_stats(read_reference_clips(style_reference))
    settings = {k: v for k, v in vars(cfg.validation.sample).items()}
    grid = {"prompts": prompts, "seeds": seeds, "settings": settings, "style_reference": style_reference, "rows": []}
    cells: list[tuple[str, list[np.ndarray] | None]] = []
    sampler, errors = grid_sampler(cfg.model, rows)
    for label, adapter in rows:
        row = {"label": label, "adapter": adapter, "error": errors.get(label), "style_distance": None, "files": []}
        clips = None
        try:
            if row["error"] is None:
                sampler.use_adapters({label: 1.0} if adapter else {})
                clips = []
                for p_i, prompt in enumerate(prompts):
                    for seed in seeds:
                        clip = sampler.generate(prompt, seed=seed, **settings)
                        name = f"p{p_i}-seed{seed}"
                        sampler.save(clip, out / "grid" / label.replace(" ", "-"), name=name)
                        row["files"].append(str(out / "grid" / label.replace(" ", "-") / f"{name}.mp4"))
                        clips.append(clip.frames)
                if ref is not None:
                    from reelora.demo.style import style_distance

                    row["style_distance"] = style_distance(clips, ref)
                log(f"[grid] {label}: {len(clips)} clips" + ("" if ref is None else f", style distance {row['style_distance']:.3f}"))
        except Exception as exc:  # keep the sweep's results; say which row failed and why
            clips = None
            row["error"] = f"{type(exc).__name__}: {exc}"
        if row["error"]:
            log(f"[grid] {label}: sampling failed ({row['error']})")
        grid["rows"].append(row)
        cells.append((label + ("" if row["style_distance"] is None else f"\nstyle {row['style_distance']:.2f}"), clips))
    columns = [f"{prompt[:28]}\nseed {seed}" for prompt in prompts for seed in seeds]
    if any(c is not None for _, c in cells):
        plot_sample_grid(cells, columns, out / "sample_grid.png")
        grid["image"] = str(out / "sample_grid.png")
    return grid


def grid_sampler(model: str, rows: list[tuple[str, str | None]]):
    """One Sampler (the backbone loaded once) with each row's adapter attached under the row's label, off;
    and why a row cannot sample (label -> error), so one bad adapter or a failed load is reported per row."""
    from reelora.models.sample import Sampler

    try:
        sampler = Sampler(model, [], progress=False)
    except Exception as exc:  # every row fails for the same reason
        return None, {label: f"{type(exc).__name__}: {exc}" for label, _ in rows}
    errors = {}
    for label, adapter in rows:
        if adapter:
            try:
                sampler.add_adapter(label, adapter)  # checked before it loads: a refused one changes nothing
            except Exception as exc:
                errors[label] = f"{type(exc).__name__}: {exc}"
    return sampler, errors


def read_reference_clips(path: str | Path) -> list[np.ndarray]:
    """Clips of a style reference: a shard directory (index.json) or a folder of .mp4 files.

    Raises:
        ValueError: no clips found (the message names the path).
    """
    from reelora.demo.style import read_video

    path = Path(path)
    if (path / "index.json").is_file():
        from reelora.data.shards import iter_clips

        clips = [read_video(mp4) for _, _, mp4 in iter_clips(path)]
    else:
        clips = [read_video(p) for p in sorted(path.glob("*.mp4"))] if path.is_dir() else [read_video(path)]
    if not clips:
        raise ValueError(f"--style-reference: no clips in {path} (a shard directory or a folder of .mp4 files)")
    return clips


def plot_sample_grid(rows: list[tuple[str, list[np.ndarray] | None]], columns: list[str], path: Path,
                     frames_per_cell: int = 3) -> None:
    """Rows = models (base first), columns = prompt x seed; each cell shows `frames_per_cell` frames side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False,
                             figsize=(1.2 + 2.2 * len(columns), 0.4 + 1.3 * len(rows)))
    for i, (label, clips) in enumerate(rows):
        for j in range(len(columns)):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if clips is None:
                ax.text(0.5, 0.5, "failed", ha="center", va="center", transform=ax.transAxes)
            else:
                f = np.asarray(clips[j])
                idx = np.linspace(0, len(f) - 1, min(frames_per_cell, len(f))).round().astype(int)
                gap = np.full((f.shape[1], max(1, f.shape[2] // 16), 3), 255, np.uint8)  # white between frames
                strip = [x for k in idx for x in (np.asarray(f[k], np.uint8), gap)][:-1]
                ax.imshow(np.concatenate(strip, axis=1), interpolation="nearest")
            if i == 0:
                ax.set_title(columns[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    per = result["per_rank"]
    lvl = f"{100 * result['level']:g}%"
    quantiles = sorted({q for r in per for q in r["quantiles"]}, key=float)
    grid = result.get("grid")
    style = bool(grid and grid.get("style_reference"))
    styles = {row["label"]: row["style_distance"] for row in grid["rows"]} if grid else {}
    lines = ["# LoRA rank sweep", ""]
    lines.append(f"Config `{result['config']}`, overrides `{' '.join(result['overrides']) or '(none)'}`, "
                 f"alpha mode **{result['alpha_mode']}**, launcher `{result['launch']}`; every rank trained with "
                 f"train.seed {', '.join(map(str, result['seeds']))}.")
    if result.get("heldout_is_training_data"):
        lines.append("")
        lines.append("**Note:** `validation.shards` was not set, so the \"held-out\" loss is measured on training clips.")
    cmp = result["comparison"]
    lines += ["", f"**{cmp['message']}.**", ""]
    head = (["rank", "alpha", "runs ok", "held-out loss (mean)", f"{lvl} interval", "per seed"] + [f"q{q}" for q in quantiles]
            + ["final train loss", "steps", "step time (s)", "peak memory (GiB)", "adapter params", "adapter size"]
            + (["style distance"] if style else []))
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in per:
        h = r["heldout"]
        tag = " **(best)**" if r["rank"] == cmp["best"] else ""
        tag += " **(pick)**" if r["rank"] == cmp.get("pick") else ""
        ci = "—" if h is None or h["low"] is None else f"± {h['half_width']:.5f} ({h['low']:.5f} – {h['high']:.5f})"
        cells = [f"{r['rank']}{tag}", f"{r['alpha']:g}" if r["alpha"] is not None else "—", f"{r['ok']}/{r['runs']}",
                 _fmt(h and h["mean"], ".5f"), ci, ", ".join(f"{v:.5f}" for v in r["losses"]) or "—"]
        cells += [_fmt(r["quantiles"].get(q)) for q in quantiles]
        params = r["adapter_params"]
        cells += [_fmt(r["final_train_loss"]), str(r["steps"] or "—"), _fmt(r["step_time_s"], ".3f"),
                  _fmt(r["peak_mem_gb"], ".2f"), "—" if params is None else f"{params:,}", _size(r["adapter_bytes"])]
        if style:
            cells.append(_fmt(styles.get(f"rank {r['rank']}"), ".3f"))
        lines.append("| " + " | ".join(cells) + " |")
    if cmp["differences"]:
        lines += ["", f"Difference to rank {cmp['best']} ({lvl} interval; paired by train.seed where both ranks have "
                  "the seed, else Welch): "
                  + "; ".join(f"rank {k}: {d['difference']:+.5f} ({d['low']:+.5f} to {d['high']:+.5f}"
                              f"{', paired' if d.get('paired') else ''})"
                              for k, d in sorted(cmp["differences"].items(), key=lambda kv: int(kv[0])))]
    if result["failed"]:
        lines += ["", "## Failed runs", ""]
        for f in result["failed"]:
            lines.append(f"- rank {f['rank']}, seed {f['seed']}: {f['reason']} (log: `{f['log']}`)")
    if grid:
        lines += ["", "## Samples", "",
                  f"Rows: the base model, then each rank's adapter (train.seed {result['seeds'][0]}); columns: the same "
                  f"prompts and sampling seeds ({', '.join(map(str, grid['seeds']))}) for every row. Clips: `grid/`.", ""]
        if grid.get("image"):
            lines += ["![sample grid](sample_grid.png)", ""]
        if style:
            lines.append(f"Style distance (reelora.demo.style: colour/tone distance in Lab units, lower is closer) of each "
                         f"row's samples to `{grid['style_reference']}`: "
                         + "; ".join(f"{row['label']}: {_fmt(row['style_distance'], '.3f')}" for row in grid["rows"]) + ".")
        for row in grid["rows"]:
            if row["error"]:
                lines.append(f"- {row['label']}: sampling failed: {row['error']}")
    lines += ["", f"Held-out loss: mean flow-matching loss at the validation timestep quantiles (fixed noise) at the "
              f"last validation, averaged over seeds; lower is better. The {lvl} interval (Student-t over seeds) covers "
              "the mean of endless reruns with that probability; two ranks differ only when the interval of their "
              "difference (seed by seed: the same train.seed shares data order and noise) excludes 0. Peak memory: CUDA allocated, or the process's peak RSS on CPU (largest over seeds). "
              "Step time: median seconds per optimizer step (first step excluded).",
              "Loss curves: `sweep.png`.", ""]
    return "\n".join(lines)


def plot_sweep(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {rank: f"C{i % 10}" for i, rank in enumerate(result["ranks"])}
    for r in result["runs"]:
        first = r["seed"] == result["seeds"][0]  # one legend entry per rank
        curve = r.get("train_curve") or []
        if curve:
            ax1.plot([s for s, _ in curve], [v for _, v in curve], color=colors[r["rank"]], alpha=0.6,
                     label=f"rank {r['rank']} train" if first else None)
        val = r.get("val_curve") or []
        if val:
            ax1.plot([s for s, _ in val], [v for _, v in val], "o--", color=colors[r["rank"]],
                     label=f"rank {r['rank']} held-out" if first else None)
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.set_title("loss per rank (every seed)")
    if ax1.lines:
        ax1.legend(fontsize=8)
    ok = sorted((r for r in result["per_rank"] if r["heldout"] is not None), key=lambda r: r["rank"])
    if ok:
        for r in ok:
            ax2.plot([r["rank"]] * len(r["losses"]), r["losses"], ".", color="lightgray")
        err = [[0 if r["heldout"]["low"] is None else r["heldout"]["half_width"] for r in ok]] * 2
        ax2.errorbar([r["rank"] for r in ok], [r["heldout"]["mean"] for r in ok], yerr=err, fmt="o-", capsize=3)
        ax2.set_xscale("log", base=2)
        ax2.set_xticks([r["rank"] for r in ok], [str(r["rank"]) for r in ok])
    ax2.set_xlabel("LoRA rank"), ax2.set_ylabel("final held-out loss"), ax2.set_title(
        f"held-out loss vs rank (mean, {100 * result['level']:g}% interval)")
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


def add_uncertainty_arguments(p: argparse.ArgumentParser) -> None:
    """--seeds and --level, shared by sweep and sufficiency."""
    p.add_argument("--seeds", type=int, default=3,
                   help="runs per setting, each with another train.seed (LoRA init, data order, noise and timestep "
                   "draws; everything else equal): their spread is the run-to-run noise every difference is judged "
                   "against. 3 is the fewest that gives a usable interval (its t multiplier is 4.3 at 95%%); 5 makes it "
                   "about half as wide. 1 reports means without an interval and never claims a difference. Seeds are "
                   "train.seed, train.seed+1, ...")
    p.add_argument("--level", type=float, default=0.95,
                   help="confidence level of every interval (Student-t over seeds for means and differences; "
                   "percentiles of the bootstrap for fitted predictions)")


def _cmd(args: argparse.Namespace) -> int:
    result = run_sweep(args)
    return 1 if result["failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="train adapters per LoRA rank (several seeds) and compare them: held-out loss with intervals, "
        "memory, size, speed, a sample grid",
        description="Train one LoRA adapter per rank (a train.py subprocess each, in OUT/rank-R/), then compare "
        "final held-out loss (mean and per validation timestep quantile), train loss curves, adapter parameters "
        "and file size, and step time. Writes OUT/sweep.json, OUT/sweep.md (table) and OUT/sweep.png (loss curves). "
        "Rerunning skips finished ranks and resumes interrupted ones from their checkpoints. A failed rank is "
        "reported (reason and log path) and the others still run; the exit code is then 1. "
        "Validation is forced on at the last step when validation.every is 0; set validation.shards to a held-out "
        "shard directory so the loss is really held out. Each rank trains --seeds times (OUT/rank-R/seed-S/); the "
        "table shows the mean held-out loss with its interval, peak memory and adapter size, and a rank is called "
        "better only when the difference exceeds run-to-run noise. Then OUT/sample_grid.png: rows = base model and "
        "each rank, columns = the same prompts and sampling seeds. Cost: ranks x seeds training runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ranks", required=True, help="comma-separated LoRA ranks, e.g. 4,8,16")
    p.add_argument("--alpha-mode", choices=("equal", "fixed"), default=None,
                   help="equal: lora.alpha = rank (same alpha/rank scale for every rank); fixed: one alpha for all "
                   "ranks (--alpha, else lora.alpha from the config/overrides). Default: equal, or fixed when "
                   "--alpha or a lora.alpha override is given")
    p.add_argument("--alpha", type=float, default=None, help="the alpha used by --alpha-mode fixed")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="'smallest rank within TOLERANCE of the best' (relative held-out loss); named only when some "
                   "rank is worse than the best beyond run-to-run noise")
    p.add_argument("--grid-prompt", action="append", default=None, metavar="TEXT",
                   help="a prompt for the sample grid (repeat for more; default: validation.prompts of the config)")
    p.add_argument("--grid-seeds", default="0,1",
                   help="sampling seeds of the grid: every row samples each prompt with each of them")
    p.add_argument("--no-grid", action="store_true", help="skip the sample grid (no sampling after training)")
    p.add_argument("--style-reference", default=None, metavar="DIR",
                   help="held-out studio clips (a shard directory or a folder of .mp4): adds each row's style distance "
                   "(reelora.demo.style, Lab units) to the table and grid")
    add_uncertainty_arguments(p)
    add_training_arguments(p)
    p.set_defaults(func=_cmd)
