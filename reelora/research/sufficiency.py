"""`reelora sufficiency`: is our library enough? A data-scaling curve, diversity and memorization report.

1. Scaling: train on nested subsets of the training clips (by title or by clip, fixed by a seed: the
   25% subset is inside the 50% one), each run with the same config and steps, and measure the held-out
   loss. Fit the saturating power law L(n) = a n^-b + c and predict what doubling the library would buy.
2. Diversity: per-clip colour/tone statistics from reelora.demo.style, title balance, and the effective
   number of distinct clips (the Vendi score of a Gaussian similarity between clip thumbnails in Lab).
3. Memorization: sample from the adapter trained on all the data with training captions and compare each
   sample's nearest-neighbour distance to training clips with that to held-out clips. An adapter that
   generalises is about as close to either (ratio ~1); one that reproduces its training clips sits much
   closer to them (ratio well below 1).

The math (fit, effective number, memorization ratio, subsets) lives in plain functions with unit tests.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from reelora.files import sha256_bytes
from reelora.research.stats import (DEFAULT_LEVEL, difference_interval, learned, mean_curve, mean_interval,
                                    paired_difference_interval, pooled_std, residual_std, still_falling, t_quantile)
from reelora.research.sweep import (add_training_arguments, add_uncertainty_arguments, check_level, default_train_script,
                                    launch_prefix, load_checked_config, run_settings, run_training, summarize_run,
                                    train_command, training_seeds)

FEATURE_FRAMES = 4  # frames kept per clip for the thumbnail features
FEATURE_SIZE = 8  # thumbnail side (area means over an 8x8 grid)


# ---------------------------------------------------------------------------------------------------------
# Scaling law


def fit_power_law_batch(n: Sequence[float], losses, grid: int = 256, refine: int = 80,
                        fix_c: bool | None = None) -> dict[str, np.ndarray]:
    """Least-squares fits of L(n) = a * n**-b + c with 0 <= c < min(L), one per row of `losses` [B, k].

    For a fixed c the model is linear in log space (log(L - c) = log a - b log n), so c is searched: a grid
    over [0, min L) per row, then a golden-section refinement around each row's best grid point; a and b come
    from the log-space least squares at that c, the error is measured on L itself. Vectorised over rows so a
    bootstrap of thousands of curves takes milliseconds. With fewer than three distinct n (or fix_c), c cannot
    be identified and is fixed at 0 (a plain power law).

    Returns:
        {"a", "b", "c", "sse"}: arrays of length B; "c_fixed": bool.
    """
    n = np.asarray(n, np.float64)
    Y = np.atleast_2d(np.asarray(losses, np.float64))
    x = -np.log(n)
    xc = x - x.mean()
    sxx = float((xc ** 2).sum())

    def solve(c: np.ndarray):  # c [B, G] -> a, b, sse [B, G]
        z = np.log(Y[:, None, :] - c[..., None])
        zm = z.mean(-1)
        b = ((z - zm[..., None]) * xc).sum(-1) / sxx
        log_a = zm - b * x.mean()
        pred = np.exp(log_a[..., None] + b[..., None] * x) + c[..., None]
        return np.exp(log_a), b, ((pred - Y[:, None, :]) ** 2).sum(-1)

    c_fixed = bool(fix_c) if fix_c is not None else len(np.unique(n)) < 3
    if c_fixed:
        a, b, sse = solve(np.zeros((len(Y), 1)))
        return {"a": a[:, 0], "b": b[:, 0], "c": np.zeros(len(Y)), "sse": sse[:, 0], "c_fixed": True}
    hi = Y.min(axis=1, keepdims=True) * (1 - 1e-9)
    u = np.linspace(0.0, 1.0, grid)[None, :]
    _, _, sses = solve(hi * u)
    i = np.argmin(sses, axis=1)
    rows = np.arange(len(Y))
    lo_c = (hi[:, 0] * u[0, np.maximum(i - 1, 0)])[:, None]
    hi_c = (hi[:, 0] * u[0, np.minimum(i + 1, grid - 1)])[:, None]
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = hi_c - g * (hi_c - lo_c), lo_c + g * (hi_c - lo_c)
    f1, f2 = solve(x1)[2], solve(x2)[2]
    for _ in range(refine):  # golden section on every row at once
        left = f1 < f2
        hi_c = np.where(left, x2, hi_c)
        lo_c = np.where(left, lo_c, x1)
        nx1 = hi_c - g * (hi_c - lo_c)
        nx2 = lo_c + g * (hi_c - lo_c)
        x1, x2 = np.where(left, nx1, x2), np.where(left, x1, nx2)
        f_new = solve(np.where(left, x1, x2))[2]
        f1, f2 = np.where(left, f_new, f2), np.where(left, f1, f_new)
    cands = np.stack([hi[:, 0] * u[0, i], x1[:, 0], x2[:, 0]], axis=1)
    best = cands[rows, np.argmin(np.stack([sses[rows, i], f1[:, 0], f2[:, 0]], axis=1), axis=1)]
    a, b, sse = solve(best[:, None])
    return {"a": a[:, 0], "b": b[:, 0], "c": best, "sse": sse[:, 0], "c_fixed": False}


def fit_power_law(n: Sequence[float], loss: Sequence[float], grid: int = 2001) -> dict:
    """One least-squares fit of L(n) = a * n**-b + c with 0 <= c < min(L) (see fit_power_law_batch).

    Returns:
        {"a", "b", "c", "rmse", "c_fixed": bool}.

    Raises:
        ValueError: fewer than two points, n <= 0, or non-finite / non-positive losses.
    """
    n = np.asarray(n, np.float64)
    y = np.asarray(loss, np.float64)
    if n.shape != y.shape or n.ndim != 1 or len(n) < 2:
        raise ValueError(f"fit_power_law: need at least two (n, loss) pairs of equal length, got {len(n)} and {len(y)}")
    if np.any(n <= 0) or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError(f"fit_power_law: n must be > 0 and losses finite and > 0 (n={n.tolist()}, loss={y.tolist()})")
    f = fit_power_law_batch(n, y[None], grid=grid, refine=200)
    return {"a": float(f["a"][0]), "b": float(f["b"][0]), "c": float(f["c"][0]),
            "rmse": math.sqrt(float(f["sse"][0]) / len(n)), "c_fixed": f["c_fixed"]}


def power_law(n, fit: dict):
    return fit["a"] * np.asarray(n, np.float64) ** -fit["b"] + fit["c"]


# ---------------------------------------------------------------------------------------------------------
# Subsets


def nested_subsets(units: Sequence[str], fractions: Sequence[float], seed: int) -> dict[float, list[str]]:
    """The first ceil(f * N) units (at least 1) of one seeded permutation, per fraction: nested by construction."""
    order = sorted(set(units))
    if not order:
        raise ValueError("nested_subsets: no units (clips or titles) to choose from")
    perm = np.random.default_rng(seed).permutation(len(order))
    ranked = [order[i] for i in perm]
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"--fractions: {f:g} is not in (0, 1]")
        k = max(1, math.ceil(f * len(order) - 1e-9))
        out[f] = sorted(ranked[:k])
    return out


def list_clips(shard_dir: str | Path) -> list[dict]:
    """[{key, title_id, caption, sha256}] of every clip in a shard directory (index order)."""
    from reelora.data.shards import ShardSet

    shards = ShardSet(shard_dir)
    number = {str(path): s for s, path in enumerate(shards.shards)}
    return [{"key": c.key, "title_id": str(c.meta.get("title_id", c.key)), "caption": c.caption,
             "sha256": c.meta.get("clip_sha256"), "shard": number[c.shard]} for c in shards.clips]


def write_subset(src: str | Path, dst: str | Path, keys: Sequence[str]) -> dict:
    """Write a shard directory holding only `keys` of `src` (same shard layout, new index.json).

    Reuses `dst` when its index already lists exactly these keys from this source (resumable).
    """
    from reelora.data.shards import INDEX, read_index, read_shard_samples, write_index, write_shard

    src, dst = Path(src), Path(dst)
    wanted = set(keys)
    src_index = read_index(src)
    digest = sha256_bytes(("\n".join(sorted(wanted)) + "\n" + (src / INDEX).read_text()).encode())
    if (dst / INDEX).is_file():
        old = json.loads((dst / INDEX).read_text())
        if old.get("subset", {}).get("sha256") == digest:
            return old
    dst.mkdir(parents=True, exist_ok=True)
    entries = []
    for shard in src_index["shards"]:
        samples = [s for s in read_shard_samples(src / shard["name"]) if s["__key__"] in wanted]
        if samples:
            entries.append(write_shard(dst / shard["name"], samples))
    found = {k for e in entries for k in e["keys"]}
    if found != wanted:
        missing = sorted(wanted - found)
        raise ValueError(f"{src}: keys not found in its shards: {', '.join(missing[:5])}")
    fields = {**src_index, "subset": {"of": str(src), "num_keys": len(found), "sha256": digest}}
    return write_index(dst, entries, fields)


# ---------------------------------------------------------------------------------------------------------
# Clip features, diversity, memorization


def clip_feature(frames: np.ndarray, num_frames: int = FEATURE_FRAMES, size: int = FEATURE_SIZE) -> np.ndarray:
    """A clip [F, H, W, 3] (uint8 or float in [0, 1]) -> Lab thumbnail vector [num_frames * size * size * 3].

    Frames are picked evenly in time and averaged over a size x size grid of cells, so clips of different
    lengths and resolutions (training clips vs samples) compare directly, in Lab units.
    """
    from reelora.demo.style import rgb_to_lab

    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"clip_feature: a clip must be [F, H, W, 3], got shape {x.shape}")
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    idx = np.linspace(0, x.shape[0] - 1, num_frames).round().astype(int)
    x = x[idx]
    hs = np.linspace(0, x.shape[1], size + 1).round().astype(int)
    ws = np.linspace(0, x.shape[2], size + 1).round().astype(int)
    cells = np.empty((num_frames, size, size, 3))
    for i in range(size):
        for j in range(size):
            block = x[:, hs[i]:max(hs[i + 1], hs[i] + 1), ws[j]:max(ws[j + 1], ws[j] + 1)]
            cells[:, i, j] = block.mean(axis=(1, 2))
    return rgb_to_lab(cells).reshape(-1)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS per-cell Lab distance between feature rows of a [n, d] and b [m, d] -> [n, m]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    cells = a.shape[1] / 3  # each cell contributes one Lab vector (3 numbers)
    return np.sqrt(np.maximum(sq, 0.0) / cells)


def effective_number(features: np.ndarray, sigma: float = 10.0) -> float:
    """Vendi score: exp(entropy of the eigenvalues of K / n), K_ij = exp(-d_ij^2 / (2 sigma^2)).

    1 for n identical clips, n for n clips far apart (relative to sigma, in Lab units), k for k distinct
    groups of identical clips of equal size.
    """
    f = np.asarray(features, np.float64)
    if len(f) == 0:
        return 0.0
    d = pairwise_distances(f, f)
    k = np.exp(-(d ** 2) / (2 * sigma ** 2))
    lam = np.linalg.eigvalsh(k / len(f))
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def effective_count(counts: Sequence[int]) -> float:
    """exp(Shannon entropy of the shares): m for m equally used titles, near 1 when one title dominates."""
    c = np.asarray([x for x in counts if x > 0], np.float64)
    if not len(c):
        return 0.0
    p = c / c.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def clip_summary(frames: np.ndarray) -> tuple[np.ndarray, dict]:
    """One clip -> (thumbnail feature, style statistics dict): all diversity needs, so frames can be dropped."""
    from reelora.demo.style import style_stats

    return clip_feature(frames), style_stats([frames]).to_dict()


def diversity(features: np.ndarray, stats: list[dict], titles: Sequence[str], sigma: float = 10.0) -> dict:
    """Spread of the per-clip style statistics, title balance, and the effective number of distinct clips.

    Args:
        features: [n, d] clip_feature rows; stats: StyleStats.to_dict() per clip; titles: title id per clip.
    """
    feats = np.asarray(features, np.float64)
    per = {"contrast": [s["contrast"] for s in stats], "saturation": [s["saturation"] for s in stats],
           "motion": [s["motion"] for s in stats], "L": [s["mean_lab"][0] for s in stats],
           "a": [s["mean_lab"][1] for s in stats], "b": [s["mean_lab"][2] for s in stats]}
    counts: dict[str, int] = {}
    for t in titles:
        counts[t] = counts.get(t, 0) + 1
    eff = effective_number(feats, sigma)
    d = pairwise_distances(feats, feats)
    off = d[~np.eye(len(d), dtype=bool)]
    n = len(feats)
    return {
        "num_clips": n, "num_titles": len(counts), "clips_per_title": counts,
        "effective_titles": effective_count(list(counts.values())),
        "effective_clips": eff, "effective_clip_fraction": eff / n if n else 0.0,
        "similarity_sigma_lab": sigma,
        "mean_pairwise_distance_lab": float(off.mean()) if len(off) else 0.0,
        "style_spread": {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in per.items()},
    }


def memorization(samples: np.ndarray, train: np.ndarray, heldout: np.ndarray, threshold: float = 0.7,
                 seed: int = 0, repeats: int = 20) -> dict:
    """Nearest-neighbour distance of samples to training clips vs to held-out clips (feature rows).

    ratio = mean NN distance to the training clips / mean NN distance to the held-out clips, both sets whole
    (so an exact copy of any training clip always counts); below `threshold` flags memorization. Identical
    distances (both 0) give ratio 1. The nearest of more candidates is closer by chance alone, so
    `ratio_equal_size` repeats the comparison with the larger set cut to the smaller one's size (random
    subsets, averaged over `repeats` draws): when only the whole-set ratio is low, the training set's size
    may explain it.
    """
    samples, train, heldout = (np.asarray(x, np.float64) for x in (samples, train, heldout))
    if not (len(samples) and len(train) and len(heldout)):
        raise ValueError("memorization: samples, training and held-out clips must all be non-empty")
    m = min(len(train), len(heldout))
    rng = np.random.default_rng(seed)

    def nn(refs: np.ndarray, size: int | None = None) -> np.ndarray:
        if size is None or len(refs) == size:
            return pairwise_distances(samples, refs).min(axis=1)
        return np.mean([pairwise_distances(samples, refs[rng.choice(len(refs), size, replace=False)]).min(axis=1)
                        for _ in range(repeats)], axis=0)

    def ratio(d_t: float, d_h: float) -> float:
        return 1.0 if d_t == d_h else (d_t / d_h if d_h > 0 else float("inf"))

    nn_train, nn_held = nn(train), nn(heldout)
    d_train, d_held = float(nn_train.mean()), float(nn_held.mean())
    r = ratio(d_train, d_held)
    return {"num_samples": len(samples), "num_train": len(train), "num_heldout": len(heldout),
            "nn_train": d_train, "nn_heldout": d_held, "ratio": r, "threshold": threshold, "flagged": bool(r < threshold),
            "ratio_equal_size": ratio(float(nn(train, m).mean()), float(nn(heldout, m).mean())),
            "closer_to_train_fraction": float(np.mean(nn_train < nn_held)),
            "min_nn_train": float(nn_train.min())}


def doubling_gain(fit: dict, n: float) -> dict:
    """Predicted held-out loss at n and 2n, the absolute and relative drop, and the room left above c.

    The gap to the asymptote is None when c was not fitted (fixed at 0: fewer than three sizes) or sits at its
    lower bound 0 (the points show no floor): then "gap" would just repeat the prediction.
    """
    now, doubled = float(power_law(n, fit)), float(power_law(2 * n, fit))
    floor_known = not fit.get("c_fixed") and fit["c"] > 1e-9 * max(now, 1e-300)
    return {"n": n, "loss_at_n": now, "loss_at_2n": doubled, "gain": now - doubled,
            "relative_gain": (now - doubled) / now if now else 0.0,
            "gap_to_asymptote": now - fit["c"] if floor_known else None}


def format_law(fit: dict, digits: int = 4) -> str:
    """'L(n) = 2 · n^-0.5 + 1': one sign on the exponent (a rising curve reads n^+0.0001)."""
    b = fit["b"]
    exp = f"-{b:.{digits}g}" if b >= 0 else f"+{-b:.{digits}g}"
    c = "" if fit.get("c_fixed") else f" + {fit['c']:.{digits}g}"
    return f"L(n) = {fit['a']:.{digits}g} · n^{exp}{c}"


def bootstrap_scaling(n: Sequence[float], groups: Sequence[Sequence[float] | dict[int, float]], full_n: float,
                      level: float = DEFAULT_LEVEL, draws: int = 2000, seed: int = 0, grid: int = 64) -> dict | None:
    """Uncertainty of the fitted curve and of the doubling gain from run-to-run noise (a parametric bootstrap
    over seeds).

    Each draw redraws every fraction's mean loss as its measured mean plus noise of the size the seeds showed
    (itself redrawn from its chi-square law, so 3 seeds give t-wide and not normal-wide intervals), refits the
    curve and predicts the doubling gain. Percentile intervals of those predictions are returned. With
    {seed: loss} per fraction, the noise is what is left after each seed's common offset (which shifts the
    whole curve and so leaves the gain alone; see stats.residual_std); with plain lists, the spread pooled
    over fractions. None when no noise can be estimated (one seed everywhere).

    Args:
        n: training clips per fraction; groups: held-out losses of each fraction's seeds; full_n: the library.

    Returns:
        {"draws", "level", "pooled_std" (the spread used), "df", "resolution" (relative half-width of one
         fraction's mean),
         "relative_gain": [low, high], "gain": [low, high],
         "loss_at_2n": [low, high], "b": [low, high]}.
    """
    if groups and isinstance(groups[0], dict):
        sd, df = residual_std(groups)
        groups = [list(g.values()) for g in groups]
    else:
        sd, df = pooled_std(groups)
    if sd is None:
        return None
    rng = np.random.default_rng(seed)
    means = np.array([np.mean(g) for g in groups])
    k = np.array([len(g) for g in groups], np.float64)
    sigma = sd * np.sqrt(df / rng.chisquare(df, draws))
    Y = means[None, :] + rng.standard_normal((draws, len(means))) * sigma[:, None] / np.sqrt(k)[None, :]
    Y = Y[np.all(Y > 0, axis=1)]  # a loss cannot be negative: drop the (rare) impossible draws
    f = fit_power_law_batch(n, Y, grid=grid, refine=60)
    now = f["a"] * full_n ** -f["b"] + f["c"]
    doubled = f["a"] * (2 * full_n) ** -f["b"] + f["c"]
    tail = 100 * (1 - level) / 2

    def interval(v):
        v = v[np.isfinite(v)]
        return [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]

    # how precisely one fraction's mean is known (beyond the seeds' shared offsets), relative to the loss: a gain
    # finer than this cannot be ruled out
    resolution = t_quantile(level, df) * sd / math.sqrt(k.min()) / float(means[-1])
    return {"draws": int(len(Y)), "level": level, "pooled_std": sd, "df": df, "resolution": resolution,
            "relative_gain": interval((now - doubled) / now), "gain": interval(now - doubled),
            "loss_at_2n": interval(doubled), "b": interval(f["b"])}


def backtest(n: Sequence[float], losses: Sequence[float], interval: dict | None = None) -> dict | None:
    """Fit on every size but the largest and predict the largest: how far the extrapolation can be trusted.

    Needs three sizes (two to fit, one to predict). `interval` (the largest size's mean_interval) tells
    whether the miss is within the run-to-run noise of the measured value.

    Returns:
        {"fit_on", "predict_n", "predicted", "measured", "error" (predicted - measured), "relative_error",
         "measured_half_width", "within_noise"}.
    """
    order = np.argsort(n)
    n, y = np.asarray(n, np.float64)[order], np.asarray(losses, np.float64)[order]
    if len(np.unique(n)) < 3:
        return None
    fit = fit_power_law(n[:-1], y[:-1])
    pred = float(power_law(n[-1], fit))
    err = pred - float(y[-1])
    half = interval["half_width"] if interval else None
    return {"fit_on": n[:-1].tolist(), "predict_n": float(n[-1]), "fit": fit, "predicted": pred,
            "measured": float(y[-1]), "error": err, "relative_error": err / float(y[-1]),
            "measured_half_width": half, "within_noise": None if half is None else bool(abs(err) <= half)}


def scaling_summary(runs: Sequence[dict], full_n: int, level: float = DEFAULT_LEVEL, seed: int = 0,
                    draws: int = 2000) -> dict | None:
    """Everything the verdict reads from the finished runs: per-fraction means and intervals, the fit on the
    means, its bootstrap, the backtest, the smallest-vs-largest difference and whether training had finished.

    Args:
        runs: {"fraction", "num_clips", "seed", "heldout_loss", "train_curve"} per finished run.
    """
    by: dict[int, list[dict]] = {}
    for r in runs:
        by.setdefault(r["num_clips"], []).append(r)
    if not by:
        return None
    sizes = sorted(by)
    by_seed = [{r.get("seed", i): r["heldout_loss"] for i, r in enumerate(by[s])} for s in sizes]
    groups = [list(g.values()) for g in by_seed]
    intervals = [mean_interval(g, level) for g in groups]
    training = []
    for s in sizes:
        curve = mean_curve([r["train_curve"] for r in by[s] if r.get("train_curve")])
        progress = learned(curve, level)
        training.append({"num_clips": s, **still_falling(curve, level), "learned": progress["learned"],
                         "first_quarter": progress["first"], "last_quarter": progress["last"],
                         "total_drop": progress["drop"]})
    out = {"n": sizes, "losses": [i["mean"] for i in intervals], "per_seed": groups, "intervals": intervals,
           "level": level, "training": training, "fit": None}
    if len(sizes) < 2:
        return out
    fit = fit_power_law(sizes, out["losses"])
    out.update(fit=fit, doubling=doubling_gain(fit, full_n),
               bootstrap=bootstrap_scaling(sizes, by_seed, full_n, level, draws=draws, seed=seed),
               backtest=backtest(sizes, out["losses"], intervals[-1]),
               effect=(paired_difference_interval(by_seed[0], by_seed[-1], level)
                       or difference_interval(groups[0], groups[-1], level)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Verdict


def scaling_verdict(s: dict | None, gain_threshold: float, max_steps: int | None = None) -> tuple[str, str, list[str]]:
    """MORE DATA HELPS / ENOUGH / INCONCLUSIVE from the scaling summary -> (label, sentence, reasons).

    In order: no curve; runs too short (train loss still falling for the full library, or for most
    fractions; or not fallen measurably at any size: nothing learned); no noise estimate (one seed per
    fraction); then the doubling gain's interval against the threshold: wholly above it (and the measured smallest-to-largest drop beyond noise) -> MORE DATA HELPS,
    wholly below (and each fraction's mean known to better than the threshold, so the curve could have shown
    such a gain) -> ENOUGH, else within noise -> INCONCLUSIVE.
    """
    reasons: list[str] = []
    if s is None or s.get("fit") is None:
        return "INCONCLUSIVE", "fewer than two fractions trained successfully, so there is no scaling curve", reasons
    fit, d, boot, eff = s["fit"], s["doubling"], s.get("bootstrap"), s.get("effect")
    pct = 100 * d["relative_gain"]
    thr = 100 * gain_threshold
    reasons.append(f"fit {format_law(fit)} (rmse {fit['rmse']:.2e}"
                   f"{'; c fixed at 0: fewer than 3 sizes' if fit['c_fixed'] else ''}) over {len(s['n'])} fractions")
    bt = s.get("backtest")
    if bt is not None:
        reasons.append(f"backtest: fitted without the largest fraction, the curve predicts {bt['predicted']:.4f} at "
                       f"n = {bt['predict_n']:g}; measured {bt['measured']:.4f} (error {100 * bt['relative_error']:+.2f}%"
                       + ("" if bt["within_noise"] is None else
                          ", within the measured interval" if bt["within_noise"] else ", outside the measured interval")
                       + ")")
        if abs(bt["error"]) > abs(d["gain"]):
            reasons.append("the backtest missed by more than the predicted doubling gain: treat the extrapolation as rough")
    elif len(s["n"]) < 3:
        reasons.append("no backtest: it needs three fractions (fit on two, predict the third)")
    drop = ""
    if eff is not None:
        drop = (f"the measured drop from {s['n'][0]} to {s['n'][-1]} clips is {eff['difference']:+.4f} "
                f"± {eff['half_width']:.4f}" + (" (paired by seed)" if eff.get("paired") else ""))
        reasons.append(drop + (" (beyond noise)" if eff["significant"] else " (within noise)"))

    judged = [t for t in s["training"] if t["falling"] is not None]
    falling = [t for t in judged if t["falling"]]
    full = s["training"][-1]
    if full["falling"] or (judged and len(falling) > len(judged) / 2):
        worst = max(falling, key=lambda t: t["drop"])
        more = f"raise train.max_steps (e.g. to {4 * max_steps})" if max_steps else "raise train.max_steps (e.g. 4x)"
        return ("INCONCLUSIVE", f"runs too short: training loss was still falling at the end in {len(falling)} of "
                f"{len(s['training'])} fractions (down {100 * worst['drop']:.1f}% over steps {worst['steps'][0]}-"
                f"{worst['steps'][1]} at {worst['num_clips']} clips), so held-out losses compare unfinished runs; "
                f"{more} and rerun", reasons)
    taught = [t for t in s["training"] if t["learned"] is not None]
    if taught and not any(t["learned"] for t in taught):
        t = taught[-1]
        more = f"raise train.max_steps (e.g. to {4 * max_steps})" if max_steps else "raise train.max_steps (e.g. 4x)"
        return ("INCONCLUSIVE", f"runs too short to learn: training loss did not fall measurably over the run at any "
                f"size ({t['first_quarter']:.4f} in the first quarter of the steps, {t['last_quarter']:.4f} in the last, "
                f"at {t['num_clips']} clips), so the adapters barely differ from the base and held-out differences are "
                f"noise; {more} or optim.lr, and rerun", reasons)
    if boot is None:
        return ("INCONCLUSIVE", "no estimate of run-to-run noise (one seed per fraction), so no difference can be told "
                "from noise; rerun with --seeds 3 or more (finished runs are reused)", reasons)
    lo, hi = (100 * v for v in boot["relative_gain"])
    lvl = f"{100 * s['level']:g}%"
    gain = (f"doubling the library is predicted to lower held-out loss by {pct:.2f}% ({lvl} interval {lo:.2f}% to "
            f"{hi:.2f}%; {d['loss_at_n']:.4f} -> {d['loss_at_2n']:.4f})")
    if lo > thr and (eff is None or eff["significant"] and eff["difference"] > 0):
        return "MORE DATA HELPS", f"{gain}, above the {thr:g}% threshold", reasons
    res = 100 * boot["resolution"]
    if hi < thr and res >= thr:
        return ("INCONCLUSIVE", f"within noise: {gain}, but the differences between fractions are only known to "
                f"± {res:.2f}%, coarser than the {thr:g}% threshold, so a gain of that size cannot be ruled out. To "
                f"decide: more seeds (the interval narrows as 1/sqrt(seeds)) or more held-out clips "
                f"(validation.num_clips)", reasons)
    if hi < thr:
        budget = f" at this training budget ({max_steps} steps per run)" if max_steps else " at this training budget"
        return "ENOUGH", f"{gain}, below the {thr:g}% threshold{budget}", reasons
    why = (f"the interval straddles the {thr:g}% threshold" if lo <= thr
           else f"{drop}, within run-to-run noise, so the predicted gain rests on noise")
    return ("INCONCLUSIVE", f"within noise: {gain}; {why}. To decide: more seeds (the interval narrows as "
            "1/sqrt(seeds)), longer runs, or fractions spanning a wider range", reasons)


def verdict(scaling: dict | None, div: dict | None, mem: dict | None, gain_threshold: float,
            max_steps: int | None = None) -> tuple[str, list[str]]:
    """A one-line answer to 'is our library enough?' and the reasons behind it."""
    label, sentence, reasons = scaling_verdict(scaling, gain_threshold, max_steps)
    answer = f"{label}: {sentence}"
    if div is not None:
        reasons.append(f"diversity: {div['num_clips']} clips from {div['num_titles']} titles "
                       f"(effective titles {div['effective_titles']:.1f}), effective distinct clips "
                       f"{div['effective_clips']:.1f} ({100 * div['effective_clip_fraction']:.0f}% of clips)")
        if div["effective_clip_fraction"] < 0.5:
            reasons.append("low diversity: many clips look alike; new footage should differ in look, not just add clips")
    if mem is not None:
        if mem["flagged"]:
            reasons.append(f"MEMORIZATION: samples are closer to training clips than to held-out ones "
                           f"(ratio {mem['ratio']:.2f} < {mem['threshold']:g}); the adapter reproduces its data: "
                           "more varied data, fewer steps or a lower rank")
        else:
            reasons.append(f"no memorization flagged: nearest-neighbour ratio train/held-out {mem['ratio']:.2f} "
                           f"(flag below {mem['threshold']:g})")
    return answer, reasons


# ---------------------------------------------------------------------------------------------------------
# The command


def parse_fractions(text: str) -> list[float]:
    try:
        fr = sorted({float(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise ValueError(f"--fractions: expected comma-separated numbers like 0.25,0.5,1.0, got {text!r}") from None
    if not fr or any(not 0 < f <= 1 for f in fr):
        raise ValueError(f"--fractions: every fraction must be in (0, 1], got {text!r}")
    return fr


def summarize_clips(shard_dir: str | Path, log=print) -> tuple[list[str], list[dict], np.ndarray, list[dict]]:
    """(keys, metas, features [n, d], style stats) of every clip in a shard directory, one clip in memory at a time."""
    from reelora.data.shards import iter_clips
    from reelora.demo.style import read_video

    keys, metas, feats, stats = [], [], [], []
    for key, meta, mp4 in iter_clips(shard_dir):
        try:
            f, st = clip_summary(read_video(mp4))
        except Exception as exc:
            raise ValueError(f"{shard_dir}: clip {key} cannot be decoded ({type(exc).__name__}: {exc})") from exc
        keys.append(key), metas.append(meta), feats.append(f), stats.append(st)
    return keys, metas, np.stack(feats), stats


def sample_adapter(cfg, adapter_dir: Path, prompts: list[str], out: Path, log=print) -> list[np.ndarray]:
    """Sample one clip per prompt (seed i) at the config's validation sample settings; writes mp4s to `out`."""
    from reelora.models.sample import Sampler

    v = cfg.validation
    sampler = Sampler(cfg.model, loras=[(str(adapter_dir), 1.0)], progress=False)
    clips = []
    for i, prompt in enumerate(prompts):
        clip = sampler.generate(prompt, seed=i, **vars(v.sample))
        sampler.save(clip, out, name=f"sample-{i:02d}")
        clips.append(clip.frames)
        log(f"[memorization] sample {i + 1}/{len(prompts)}: {prompt!r}")
    return clips


def run_sufficiency(args: argparse.Namespace, log=print) -> dict:
    fractions = parse_fractions(args.fractions)
    check_level(args.level)
    overrides = list(args.overrides)
    if args.config and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config: {args.config} not found")
    cfg = load_checked_config(args.config, overrides)
    if cfg.data.shards is None:
        raise ValueError("config key 'data.shards': required (the training library's shard directory)")
    heldout = args.heldout or cfg.validation.shards
    if heldout is None:
        raise ValueError("config key 'validation.shards': sufficiency needs held-out clips; set validation.shards=DIR "
                         "or pass --heldout DIR (a shard directory built from titles not in data.shards)")
    for what, d in (("data.shards", cfg.data.shards), ("validation.shards" if not args.heldout else "--heldout", heldout)):
        if not (Path(d) / "index.json").is_file():
            raise FileNotFoundError(f"{what}: {d}/index.json not found (build shards with `reelora shards build`)")
    script = args.train_script or default_train_script()
    if not Path(script).is_file():
        raise FileNotFoundError(f"--train-script: {script} not found")
    prefix = launch_prefix(args.launch)
    seeds = training_seeds(cfg.train.seed, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    clips = list_clips(cfg.data.shards)
    held = list_clips(heldout)
    leaked = sorted({c["sha256"] for c in clips if c["sha256"]} & {c["sha256"] for c in held if c["sha256"]})
    if leaked:
        log(f"warning: {len(leaked)} held-out clips are also training clips (same sha256): held-out loss is optimistic")
    used_held = min(cfg.validation.num_clips, len(held))
    if used_held < len(held):
        log(f"warning: validation.num_clips={cfg.validation.num_clips} measures held-out loss on only {used_held} of "
            f"{len(held)} held-out clips; raise it (e.g. validation.num_clips={len(held)}) for a steadier curve")
    units = [c["title_id"] if args.by == "title" else c["key"] for c in clips]
    subsets = nested_subsets(units, fractions, args.seed)
    kept: list[float] = []
    for f in fractions:  # with few titles two fractions can round to the same subset: train it once
        if kept and subsets[kept[-1]] == subsets[f]:
            log(f"warning: fraction {f:g} selects the same {len(subsets[f])} {args.by}s as {kept[-1]:g}; training it once")
            kept[-1] = f
        else:
            kept.append(f)
    fractions = kept
    log(f"[sufficiency] {len(clips)} training clips in {len(set(c['title_id'] for c in clips))} titles, "
        f"{len(held)} held-out clips; subsets by {args.by}, seed {args.seed}")

    base_over = [o for o in overrides if not o.startswith("train.seed=")]
    runs = []
    for i, f in enumerate(fractions):
        chosen = set(subsets[f])
        keys = [c["key"] for c, u in zip(clips, units) if u in chosen]
        name = f"frac-{f:g}"
        sub_dir = out / "subsets" / name
        write_subset(cfg.data.shards, sub_dir, keys)
        for j, seed in enumerate(seeds):
            run_dir = out / "runs" / name / f"seed-{seed}"
            run_over = base_over + [f"data.shards={sub_dir}", f"validation.shards={heldout}", f"train.seed={seed}",
                                    f"train.output_dir={run_dir}"]
            if not cfg.validation.every:
                run_over.append(f"validation.every={cfg.train.max_steps}")
            if "train.resume" not in {o.split("=", 1)[0] for o in overrides}:
                run_over.append("train.resume=latest")
            label = (f"fraction {f:g}: {len(keys)} clips" + (f", {len(chosen)} titles" if args.by == "title" else "")
                     + f", seed {seed} ({i * len(seeds) + j + 1}/{len(fractions) * len(seeds)})")
            status = run_training(train_command(prefix, script, args.config, run_over), run_dir, label, log,
                                  timeout=args.timeout, settings=run_settings(args.config, run_over))
            entry = {"fraction": f, "seed": seed, "num_clips": len(keys), "num_units": len(chosen), "subset": str(sub_dir),
                     "output_dir": str(run_dir), **status}
            if status["status"] != "failed":
                s = summarize_run(run_dir)
                entry.update({k: s[k] for k in ("heldout_loss", "heldout_quantiles", "final_train_loss", "steps",
                                                "step_time_s", "train_curve")})
                if s["heldout_loss"] is not None:
                    log(f"[{label}] held-out loss {s['heldout_loss']:.5f}")
            runs.append(entry)

    ok = [r for r in runs if r["status"] != "failed" and r.get("heldout_loss") is not None]
    scaling = scaling_summary(ok, len(clips), args.level, seed=args.seed)

    log("[diversity] reading training clips")
    train_keys, train_metas, train_feats, train_stats = summarize_clips(cfg.data.shards)
    div = diversity(train_feats, train_stats, [str(m.get("title_id", k)) for k, m in zip(train_keys, train_metas)],
                    sigma=args.sigma)

    mem = None
    full = max(ok, key=lambda r: r["num_clips"]) if ok else None
    if full is not None and args.samples > 0:
        rng = np.random.default_rng(args.seed)
        captions = [c["caption"] for c in clips if c["caption"]] or [""]
        prompts = [captions[j] for j in rng.choice(len(captions), args.samples, replace=len(captions) < args.samples)]
        log(f"[memorization] sampling {len(prompts)} clips from {full['output_dir']}/adapter with training captions")
        samples = sample_adapter(cfg, Path(full["output_dir"]) / "adapter", prompts, out / "samples", log)
        _, _, held_feats, _ = summarize_clips(heldout)
        # the reference is what that adapter actually trained on
        used = {c["key"] for c, u in zip(clips, units) if u in set(subsets[full["fraction"]])}
        train_ref = train_feats[[i for i, k in enumerate(train_keys) if k in used]]
        mem = memorization(np.stack([clip_feature(s) for s in samples]), train_ref, held_feats,
                           threshold=args.memorization_threshold, seed=args.seed)
        mem["adapter"] = str(Path(full["output_dir"]) / "adapter")
        mem["prompts"] = prompts

    answer, reasons = verdict(scaling, div, mem, args.gain_threshold, cfg.train.max_steps)
    result = {"config": args.config, "overrides": overrides, "heldout": str(heldout), "by": args.by, "seed": args.seed,
              "seeds": seeds, "level": args.level, "gain_threshold": args.gain_threshold,
              "max_steps": cfg.train.max_steps, "fractions": fractions, "num_training_clips": len(clips), "num_heldout_clips": len(held),
              "heldout_clips_in_loss": used_held,
              "heldout_overlap": len(leaked), "runs": runs, "scaling": scaling, "diversity": div,
              "memorization": mem, "verdict": answer, "reasons": reasons,
              "failed": [{"fraction": r["fraction"], "seed": r["seed"], "reason": r["reason"], "log": r["log"]} for r in runs if r["status"] == "failed"]}
    (out / "sufficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sufficiency.md").write_text(render_markdown(result))
    plot_scaling(result, out / "sufficiency.png")
    log(f"verdict: {answer}")
    log(f"wrote {out / 'sufficiency.json'}, {out / 'sufficiency.md'}, {out / 'sufficiency.png'}")
    return result


def render_markdown(r: dict) -> str:
    L = ["# Is our library enough?", "", f"**{r['verdict']}**", ""]
    L += [f"- {x}" for x in r["reasons"]]
    lvl = f"{100 * r['level']:g}%"
    L += ["", "## Scaling curve", "",
          f"Nested subsets of the {r['num_training_clips']} training clips by {r['by']} (seed {r['seed']}), every run "
          f"with the same config and steps ({r['max_steps']}), repeated with train.seed {', '.join(map(str, r['seeds']))}; "
          f"held-out loss on {r['heldout_clips_in_loss']} of the {r['num_heldout_clips']} clips of `{r['heldout']}` "
          "(validation.num_clips; mean flow-matching loss at the validation timestep quantiles, fixed noise).", ""]
    s = r.get("scaling")
    if s:
        L += [f"| clips | runs | held-out loss: mean | {lvl} interval | per seed | train loss: first → last quarter "
              "| train loss still falling? |", "|---|---|---|---|---|---|---|"]
        for n, iv, per, tr in zip(s["n"], s["intervals"], s["per_seed"], s["training"]):
            ci = "— (one seed)" if iv["low"] is None else f"{iv['low']:.5f} – {iv['high']:.5f} (± {iv['half_width']:.5f})"
            fall = ("too few logged steps to tell" if tr["falling"] is None else
                    f"{'**yes**' if tr['falling'] else 'no'} ({'fell' if tr['drop'] >= 0 else 'rose'} "
                    f"{abs(100 * tr['drop']):.1f}% over steps {tr['steps'][0]}–{tr['steps'][1]})")
            went = ("—" if tr.get("learned") is None else f"{tr['first_quarter']:.4f} → {tr['last_quarter']:.4f} "
                    + ("(fell)" if tr["learned"] else "(**no measurable drop**)"))
            L.append(f"| {n} | {iv['n']} | {iv['mean']:.5f} | {ci} | {', '.join(f'{v:.5f}' for v in per)} | {went} | {fall} |")
    if s and s.get("fit"):
        f, d = s["fit"], s["doubling"]
        L += ["", f"Fit on the means: {format_law(f, 5)} (rmse {f['rmse']:.3g})"
              + ("; c fixed at 0: fewer than 3 sizes, so the curve has no floor and over-predicts gains." if f["c_fixed"] else "."),
              f"At the full library (n = {d['n']}): predicted {d['loss_at_n']:.5f}; at 2n: {d['loss_at_2n']:.5f} "
              f"(gain {d['gain']:.5f}, {100 * d['relative_gain']:.2f}%); "
              + (f"gap to the asymptote c: {d['gap_to_asymptote']:.5f}." if d["gap_to_asymptote"] is not None else
                 "the asymptote c is not identified (" + ("fixed at 0" if f["c_fixed"] else "fitted at its bound 0: "
                 "the points show no floor") + "), so there is no gap to report.")]
        bs = s.get("bootstrap")
        if bs:
            lo, hi = bs["relative_gain"]
            L.append(f"Doubling gain, {lvl} interval: {100 * lo:.2f}% to {100 * hi:.2f}% (loss at 2n {bs['loss_at_2n'][0]:.5f} – "
                     f"{bs['loss_at_2n'][1]:.5f}; {bs['draws']} bootstrap draws of the fraction means with the seeds' "
                     f"spread {bs['pooled_std']:.5f} once each seed's common offset is removed, {bs['df']} degrees of "
                     f"freedom). Threshold: {100 * r['gain_threshold']:g}%.")
        bt = s.get("backtest")
        if bt:
            L.append(f"Backtest: fitted on n = {', '.join(f'{v:g}' for v in bt['fit_on'])} only, the curve predicts "
                     f"{bt['predicted']:.5f} at n = {bt['predict_n']:g}; measured {bt['measured']:.5f}: error "
                     f"{bt['error']:+.5f} ({100 * bt['relative_error']:+.2f}%)"
                     + ("" if bt["measured_half_width"] is None else
                        f", the measured mean's own interval is ± {bt['measured_half_width']:.5f}") + ".")
    L += ["", f"How to read this: the {lvl} interval of a mean covers the loss an endless number of seeds would "
          "average with that probability; two sizes differ only when the interval of their difference excludes 0 "
          "(taken seed by seed: runs with the same train.seed share data order and validation noise, an offset that "
          "moves every size alike). The doubling gain's interval comes from refitting the curve to means redrawn "
          "within the noise that is left. The "
          "backtest error is how far the same kind of fit missed a size it had not seen: expect an extrapolation to "
          "2n to miss by at least that much."]
    if r["heldout_overlap"]:
        L += ["", f"**Warning:** {r['heldout_overlap']} held-out clips are also in the training shards."]
    dv = r["diversity"]
    L += ["", "## Diversity", "", f"- clips: {dv['num_clips']}, titles: {dv['num_titles']} (effective {dv['effective_titles']:.2f})",
          f"- effective distinct clips (Vendi score, Lab thumbnails, sigma {dv['similarity_sigma_lab']:g}): "
          f"{dv['effective_clips']:.2f} ({100 * dv['effective_clip_fraction']:.0f}% of clips)",
          f"- mean pairwise clip distance: {dv['mean_pairwise_distance_lab']:.2f} Lab units", "",
          "| statistic | mean | std across clips |", "|---|---|---|"]
    for k, v in dv["style_spread"].items():
        L.append(f"| {k} | {v['mean']:.3f} | {v['std']:.3f} |")
    m = r.get("memorization")
    L += ["", "## Memorization", ""]
    if m is None:
        L.append("Not measured (no successful run, or --samples 0).")
    else:
        L += [f"{m['num_samples']} samples from `{m['adapter']}` with training captions; nearest-neighbour distances "
              f"(Lab thumbnails) to the {m['num_train']} training clips it learned from and the {m['num_heldout']} held-out clips:", "",
              f"- to training clips: {m['nn_train']:.3f}", f"- to held-out clips: {m['nn_heldout']:.3f}",
              f"- ratio: **{m['ratio']:.3f}** ({'FLAGGED' if m['flagged'] else 'not flagged'}; flag below {m['threshold']:g}); "
              f"with equal-size reference sets: {m['ratio_equal_size']:.3f}",
              f"- closest sample to a training clip: {m['min_nn_train']:.3f}",
              f"- samples closer to a training clip than to any held-out clip: {100 * m['closer_to_train_fraction']:.0f}%"]
    L += ["", "Scaling plot: `sufficiency.png`; samples: `samples/`.", ""]
    return "\n".join(L)


def plot_scaling(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    s = r.get("scaling")
    if s:
        for n, per in zip(s["n"], s["per_seed"]):
            ax.plot([n] * len(per), per, ".", color="lightgray")
        err = [[0 if iv["low"] is None else iv["mean"] - iv["low"] for iv in s["intervals"]],
               [0 if iv["high"] is None else iv["high"] - iv["mean"] for iv in s["intervals"]]]
        ax.errorbar(s["n"], s["losses"], yerr=err, fmt="o", capsize=3,
                    label=f"held-out loss (mean, {100 * r['level']:g}% interval)")
        if s.get("fit"):
            full = r["num_training_clips"]
            xs = np.geomspace(min(s["n"]), 2 * full, 100)
            ax.plot(xs, power_law(xs, s["fit"]), "-", label="fit a·n^-b + c")
            if s["doubling"]["gap_to_asymptote"] is not None:
                ax.axhline(s["fit"]["c"], ls=":", color="gray", label="asymptote c")
            ax.axvline(full, ls="--", color="gray", lw=0.8)
            ax.plot([2 * full], [s["doubling"]["loss_at_2n"]], "x", color="red", label="predicted at 2x data")
            if s.get("bootstrap"):
                lo, hi = s["bootstrap"]["loss_at_2n"]
                ax.plot([2 * full, 2 * full], [lo, hi], "-", color="red", lw=2, alpha=0.5)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ticks = sorted(set(s["n"]) | ({r["num_training_clips"], 2 * r["num_training_clips"]} if s.get("fit") else set()))
        ax.set_xticks(ticks)
        ax.legend(fontsize=8)
    ax.set_xlabel("training clips"), ax.set_ylabel("held-out loss"), ax.set_title("data scaling")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cmd(args: argparse.Namespace) -> int:
    result = run_sufficiency(args)
    return 1 if result["failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sufficiency", help="is our library enough? data-scaling curve, diversity and memorization report",
        description="Train on nested subsets of the training clips (data.shards), measure held-out loss per "
        "fraction, fit L(n) = a n^-b + c and predict the gain from doubling the library; measure diversity (per-clip "
        "style spread, titles, effective number of distinct clips) and memorization (nearest-neighbour distance of "
        "adapter samples to training vs held-out clips). Writes OUT/sufficiency.json, OUT/sufficiency.md (verdict and "
        "numbers), OUT/sufficiency.png (scaling curve), OUT/subsets/, OUT/runs/ and OUT/samples/. Rerunning skips "
        "finished runs. Every fraction trains with the same config (same train.max_steps), --seeds times. "
        "The verdict is MORE DATA HELPS, ENOUGH or INCONCLUSIVE (and why: noise, runs too short, one seed); a "
        "backtest (fit without the largest fraction, predict it) says how far the extrapolation can be trusted. "
        "Cost: fractions x seeds training runs (9 with the defaults).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--fractions", default="0.25,0.5,1.0", help="comma-separated fractions of the training set in (0, 1]")
    p.add_argument("--by", choices=("title", "clip"), default="title",
                   help="subset unit: whole titles (closer to 'fewer films') or single clips")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the subset order and the memorization prompts (the training seeds are --seeds)")
    p.add_argument("--heldout", default=None, metavar="DIR",
                   help="held-out shard directory (default: validation.shards from the config)")
    p.add_argument("--samples", type=int, default=8, help="adapter samples for the memorization check (0 skips it)")
    p.add_argument("--gain-threshold", type=float, default=0.02,
                   help="the gain worth more data, as a fraction of held-out loss: MORE DATA HELPS when the whole "
                   "interval of the predicted gain from doubling the library lies above it, ENOUGH when it lies below, "
                   "INCONCLUSIVE when it straddles it (or the runs were too short, or one seed gives no noise estimate)")
    p.add_argument("--memorization-threshold", type=float, default=0.7,
                   help="flag memorization when the train/held-out nearest-neighbour distance ratio is below this")
    p.add_argument("--sigma", type=float, default=10.0,
                   help="similarity bandwidth in Lab units for the effective number of distinct clips")
    add_uncertainty_arguments(p)
    add_training_arguments(p)
    p.set_defaults(func=_cmd)
