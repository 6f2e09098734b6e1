"""Run-to-run noise for the research tools: intervals of a mean and of a difference, and "is the training
loss still falling?".

Every run of a sweep or sufficiency experiment is repeated with `--seeds N` (train.seed = base + i: another
LoRA init, data order and noise/timestep draws, everything else equal), so each setting has N held-out
losses. Their spread is the noise any comparison has to beat. Intervals are Student-t (the seeds' losses
are few, and a normal quantile would make 3-seed intervals far too narrow).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DEFAULT_LEVEL = 0.95


def t_quantile(level: float, df: float) -> float:
    """The two-sided Student-t multiplier: P(|T_df| <= q) = level."""
    from scipy.special import stdtrit

    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return float(stdtrit(df, 0.5 + level / 2))


def mean_interval(values: Sequence[float], level: float = DEFAULT_LEVEL) -> dict:
    """Mean of `values` and its t interval; with one value the interval is unknown (low/high None).

    Returns:
        {"n", "mean", "std" (sample, ddof 1), "half_width", "low", "high", "level"}.
    """
    x = np.asarray([v for v in values if v is not None], np.float64)
    if not len(x):
        raise ValueError("mean_interval: no values")
    out = {"n": len(x), "mean": float(x.mean()), "std": None, "half_width": None, "low": None, "high": None, "level": level}
    if len(x) >= 2:
        std = float(x.std(ddof=1))
        half = t_quantile(level, len(x) - 1) * std / math.sqrt(len(x))
        out.update(std=std, half_width=half, low=out["mean"] - half, high=out["mean"] + half)
    return out


def difference_interval(a: Sequence[float], b: Sequence[float], level: float = DEFAULT_LEVEL) -> dict | None:
    """mean(a) - mean(b) with a Welch t interval (unequal spreads); None when either side has one value.

    Returns:
        {"difference", "half_width", "low", "high", "df", "level", "significant": interval excludes 0}.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se2 = va + vb
    d = float(a.mean() - b.mean())
    if se2 == 0:  # identical repeats on both sides: no noise at all
        return {"difference": d, "half_width": 0.0, "low": d, "high": d, "df": float("inf"), "level": level,
                "significant": d != 0}
    df = se2 ** 2 / ((va ** 2 / (len(a) - 1) if va else 0) + (vb ** 2 / (len(b) - 1) if vb else 0))
    half = t_quantile(level, df) * math.sqrt(se2)
    return {"difference": d, "half_width": half, "low": d - half, "high": d + half, "df": float(df), "level": level,
            "significant": bool(d - half > 0 or d + half < 0)}


def paired_difference_interval(a: dict[int, float], b: dict[int, float], level: float = DEFAULT_LEVEL) -> dict | None:
    """mean(a[s] - b[s]) over the seeds s both have, with a t interval; None with fewer than two shared seeds.

    Runs with the same train.seed share data order, noise draws and the validation noise, so most of the
    seed-to-seed spread cancels in a per-seed difference: the paired interval is the honest (and narrower)
    one for this design.
    """
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    d = np.array([a[s] - b[s] for s in common], np.float64)
    iv = mean_interval(d, level)
    return {"difference": iv["mean"], "half_width": iv["half_width"], "low": iv["low"], "high": iv["high"],
            "df": float(len(d) - 1), "level": level, "paired": True, "seeds": common,
            "significant": bool(iv["low"] > 0 or iv["high"] < 0)}


def residual_std(table: Sequence[dict[int, float]]) -> tuple[float | None, int]:
    """Run-to-run spread left after removing each seed's common offset (two-way additive fit: setting + seed).

    `table` holds one {seed: loss} per setting. The seed offset moves every setting's loss alike (same
    validation noise and data order), so it cannot change a difference between settings; what can is the
    residual. Uses the seeds every setting has; falls back to the plain pooled spread when fewer than two are
    shared. Returns (std, degrees of freedom).
    """
    common = sorted(set.intersection(*(set(t) for t in table))) if table else []
    if len(common) < 2 or len(table) < 2:
        return pooled_std([list(t.values()) for t in table])
    y = np.array([[t[s] for s in common] for t in table], np.float64)  # [settings, seeds]
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    df = (y.shape[0] - 1) * (y.shape[1] - 1)
    return float(np.sqrt((resid ** 2).sum() / df)), df


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[float | None, int]:
    """Run-to-run standard deviation pooled over settings (same noise assumed at each) and its degrees of freedom."""
    ss, df = 0.0, 0
    for g in groups:
        g = np.asarray(g, np.float64)
        if len(g) >= 2:
            ss += float(((g - g.mean()) ** 2).sum())
            df += len(g) - 1
    return (math.sqrt(ss / df) if df else None), df


def still_falling(curve: Sequence[Sequence[float]], level: float = DEFAULT_LEVEL, min_drop: float = 0.01,
                  min_points: int = 8) -> dict:
    """Is the training loss still going down at the end of a run?

    A line fitted to the second half of the (step, loss) curve: "falling" when its slope's t interval lies
    below zero and the line drops by more than `min_drop` (relative) over that half. Per-step flow-matching
    losses are noisy (they depend on the sampled timestep), hence the interval rather than last < first.

    Returns:
        {"falling": True/False/None (too few points to tell), "drop": relative drop over the second half,
         "steps": [first, last] of that half, "points": n}.
    """
    c = np.asarray(curve, np.float64).reshape(-1, 2) if len(curve) else np.zeros((0, 2))
    half = c[len(c) // 2:]
    if len(half) < min_points // 2 or len(c) < min_points:
        return {"falling": None, "drop": None, "steps": None, "points": len(c)}
    s, y = half[:, 0], half[:, 1]
    sc = s - s.mean()
    sxx = float((sc ** 2).sum())
    slope = float((sc * (y - y.mean())).sum() / sxx)
    resid = y - (y.mean() + slope * sc)
    se = math.sqrt(float((resid ** 2).sum()) / (len(y) - 2) / sxx)
    span = float(s[-1] - s[0])
    level_y = float(y.mean()) or 1.0
    drop = -slope * span / abs(level_y)
    falling = bool(slope + t_quantile(level, len(y) - 2) * se < 0 and drop > min_drop)
    return {"falling": falling, "drop": drop, "steps": [int(s[0]), int(s[-1])], "points": len(c)}


def learned(curve: Sequence[Sequence[float]], level: float = DEFAULT_LEVEL, min_points: int = 12) -> dict:
    """Did the training loss go down at all? First quarter of the (step, loss) curve against the last quarter.

    "learned" when the Welch interval of (first - last) lies above zero. A run whose loss never fell
    measurably taught its adapter nothing its held-out loss could show: comparing such runs compares noise
    (the issue that made this check: 30-step runs whose held-out losses agreed to 4 digits at every size).

    Returns:
        {"learned": True/False/None (too few points), "first", "last" (quarter means), "drop" (relative)}.
    """
    y = [v for _, v in curve]
    q = len(y) // 4
    if len(y) < min_points or q < 3:
        return {"learned": None, "first": None, "last": None, "drop": None}
    first, last = y[:q], y[-q:]
    d = difference_interval(first, last, level)
    m = float(np.mean(first))
    return {"learned": bool(d["low"] > 0), "first": m, "last": float(np.mean(last)),
            "drop": (m - float(np.mean(last))) / abs(m) if m else 0.0}


def mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    """Average (step, loss) curves of repeated runs over the steps they all logged."""
    if not curves:
        return []
    common = set.intersection(*({int(s) for s, _ in c} for c in curves))
    by = [{int(s): v for s, v in c} for c in curves]
    return [[s, float(np.mean([b[s] for b in by]))] for s in sorted(common)]
