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
from reelora.research.sweep import (add_training_arguments, default_train_script, launch_prefix,
                                    load_checked_config, run_settings, run_training, summarize_run, train_command)

FEATURE_FRAMES = 4  # frames kept per clip for the thumbnail features
FEATURE_SIZE = 8  # thumbnail side (area means over an 8x8 grid)


# ---------------------------------------------------------------------------------------------------------
# Scaling law


def fit_power_law(n: Sequence[float], loss: Sequence[float], grid: int = 2001) -> dict:
    """Least-squares fit of L(n) = a * n**-b + c with 0 <= c < min(L).

    For a fixed c the model is linear in log space (log(L - c) = log a - b log n), so c is searched: a
    grid over [0, min L), then a golden-section refinement around the best grid point; a and b come from
    the log-space least squares at that c, the error is measured on L itself. With fewer than three
    distinct n, c cannot be identified and is fixed at 0 (a plain power law).

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
    logn = np.log(n)

    def solve(c: float) -> tuple[float, float, float]:
        X = np.stack([np.ones_like(logn), -logn], axis=1)
        (log_a, b), *_ = np.linalg.lstsq(X, np.log(y - c), rcond=None)
        pred = np.exp(log_a) * n ** -b + c
        return float(np.exp(log_a)), float(b), float(np.sum((pred - y) ** 2))

    if len(np.unique(n)) < 3:
        a, b, sse = solve(0.0)
        return {"a": a, "b": b, "c": 0.0, "rmse": math.sqrt(sse / len(n)), "c_fixed": True}
    hi = float(y.min()) * (1 - 1e-9)
    cs = np.linspace(0.0, hi, grid)
    sses = np.array([solve(c)[2] for c in cs])
    i = int(np.argmin(sses))
    lo_c, hi_c = cs[max(i - 1, 0)], cs[min(i + 1, grid - 1)]
    g = (math.sqrt(5) - 1) / 2  # golden section on [lo_c, hi_c]
    x1, x2 = hi_c - g * (hi_c - lo_c), lo_c + g * (hi_c - lo_c)
    f1, f2 = solve(x1)[2], solve(x2)[2]
    for _ in range(200):
        if hi_c - lo_c <= 1e-14 * max(hi, 1e-300):
            break
        if f1 < f2:
            hi_c, x2, f2 = x2, x1, f1
            x1 = hi_c - g * (hi_c - lo_c)
            f1 = solve(x1)[2]
        else:
            lo_c, x1, f1 = x1, x2, f2
            x2 = lo_c + g * (hi_c - lo_c)
            f2 = solve(x2)[2]
    best_c = min([(sses[i], cs[i]), (f1, x1), (f2, x2)])[1]
    a, b, sse = solve(float(best_c))
    return {"a": a, "b": b, "c": float(best_c), "rmse": math.sqrt(sse / len(n)), "c_fixed": False}


def power_law(n, fit: dict):
    return fit["a"] * np.asarray(n, np.float64) ** -fit["b"] + fit["c"]


def doubling_gain(fit: dict, n: float) -> dict:
    """Predicted held-out loss at n and 2n, the absolute and relative drop, and the room left above c."""
    now, doubled = float(power_law(n, fit)), float(power_law(2 * n, fit))
    return {"n": n, "loss_at_n": now, "loss_at_2n": doubled, "gain": now - doubled,
            "relative_gain": (now - doubled) / now if now else 0.0, "gap_to_asymptote": now - fit["c"]}


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


# ---------------------------------------------------------------------------------------------------------
# Verdict


def verdict(scaling: dict | None, div: dict | None, mem: dict | None, gain_threshold: float) -> tuple[str, list[str]]:
    """A one-line answer to 'is our library enough?' and the reasons behind it."""
    reasons = []
    if scaling is None or scaling.get("fit") is None:
        answer = "INCONCLUSIVE: fewer than two fractions trained successfully, so there is no scaling curve"
    else:
        d, fit, losses = scaling["doubling"], scaling["fit"], scaling["losses"]
        pct = 100 * d["relative_gain"]
        if fit["b"] <= 0 or losses[-1] >= losses[0]:
            answer = ("ENOUGH for this training budget: held-out loss did not fall with more data "
                      f"({losses[0]:.4f} at {scaling['n'][0]} clips -> {losses[-1]:.4f} at {scaling['n'][-1]}); "
                      "check the runs are long enough to tell")
        elif d["relative_gain"] < gain_threshold:
            answer = (f"ENOUGH: doubling the library is predicted to lower held-out loss by only {pct:.1f}% "
                      f"({d['loss_at_n']:.4f} -> {d['loss_at_2n']:.4f}; threshold {100 * gain_threshold:g}%)")
        else:
            answer = (f"NOT ENOUGH: doubling the library is predicted to lower held-out loss by {pct:.1f}% "
                      f"({d['loss_at_n']:.4f} -> {d['loss_at_2n']:.4f}; threshold {100 * gain_threshold:g}%)")
        reasons.append(f"fit L(n) = {fit['a']:.4g} n^-{fit['b']:.4g} + {fit['c']:.4g} (rmse {fit['rmse']:.2e}"
                       f"{', c fixed at 0: fewer than 3 sizes' if fit['c_fixed'] else ''}) over {len(losses)} fractions")
        if len(losses) < 4:
            reasons.append(f"only {len(losses)} points for a 3-parameter curve: treat the extrapolation as rough")
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

    runs = []
    for i, f in enumerate(fractions):
        chosen = set(subsets[f])
        keys = [c["key"] for c, u in zip(clips, units) if u in chosen]
        name = f"frac-{f:g}"
        sub_dir, run_dir = out / "subsets" / name, out / "runs" / name
        write_subset(cfg.data.shards, sub_dir, keys)
        run_over = overrides + [f"data.shards={sub_dir}", f"validation.shards={heldout}", f"train.output_dir={run_dir}"]
        if not cfg.validation.every:
            run_over.append(f"validation.every={cfg.train.max_steps}")
        if "train.resume" not in {o.split("=", 1)[0] for o in overrides}:
            run_over.append("train.resume=latest")
        label = f"fraction {f:g}: {len(keys)} clips" + (f", {len(chosen)} titles" if args.by == "title" else "") + f" ({i + 1}/{len(fractions)})"
        status = run_training(train_command(prefix, script, args.config, run_over), run_dir, label, log,
                              timeout=args.timeout, settings=run_settings(args.config, run_over))
        entry = {"fraction": f, "num_clips": len(keys), "num_units": len(chosen), "subset": str(sub_dir),
                 "output_dir": str(run_dir), **status}
        if status["status"] != "failed":
            s = summarize_run(run_dir)
            entry.update({k: s[k] for k in ("heldout_loss", "heldout_quantiles", "final_train_loss", "steps", "step_time_s")})
            entry["train_curve"] = s["train_curve"]
            if s["heldout_loss"] is not None:
                log(f"[{label}] held-out loss {s['heldout_loss']:.5f}")
        runs.append(entry)

    ok = [r for r in runs if r["status"] != "failed" and r.get("heldout_loss") is not None]
    scaling = None
    if len({r["num_clips"] for r in ok}) >= 2:
        n = [r["num_clips"] for r in ok]
        losses = [r["heldout_loss"] for r in ok]
        fit = fit_power_law(n, losses)
        scaling = {"n": n, "losses": losses, "fit": fit, "doubling": doubling_gain(fit, len(clips))}
    elif ok:
        scaling = {"n": [r["num_clips"] for r in ok], "losses": [r["heldout_loss"] for r in ok], "fit": None}

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

    answer, reasons = verdict(scaling if scaling and scaling.get("fit") else None, div, mem, args.gain_threshold)
    result = {"config": args.config, "overrides": overrides, "heldout": str(heldout), "by": args.by, "seed": args.seed,
              "fractions": fractions, "num_training_clips": len(clips), "num_heldout_clips": len(held),
              "heldout_clips_in_loss": used_held,
              "heldout_overlap": len(leaked), "runs": runs, "scaling": scaling, "diversity": div,
              "memorization": mem, "verdict": answer, "reasons": reasons,
              "failed": [{"fraction": r["fraction"], "reason": r["reason"], "log": r["log"]} for r in runs if r["status"] == "failed"]}
    (out / "sufficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sufficiency.md").write_text(render_markdown(result))
    plot_scaling(result, out / "sufficiency.png")
    log(f"verdict: {answer}")
    log(f"wrote {out / 'sufficiency.json'}, {out / 'sufficiency.md'}, {out / 'sufficiency.png'}")
    return result


def render_markdown(r: dict) -> str:
    L = ["# Is our library enough?", "", f"**{r['verdict']}**", ""]
    L += [f"- {x}" for x in r["reasons"]]
    L += ["", "## Scaling curve", "",
          f"Nested subsets of the {r['num_training_clips']} training clips by {r['by']} (seed {r['seed']}), every run "
          f"with the same config and steps; held-out loss on {r['heldout_clips_in_loss']} of the {r['num_heldout_clips']} "
          f"clips of `{r['heldout']}` (validation.num_clips) "
          "(mean flow-matching loss at the validation timestep quantiles, fixed noise).", "",
          "| fraction | clips | " + r["by"] + "s | status | held-out loss | final train loss | log |", "|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        hl = "—" if x.get("heldout_loss") is None else f"{x['heldout_loss']:.5f}"
        tl = "—" if x.get("final_train_loss") is None else f"{x['final_train_loss']:.5f}"
        st = x["status"] + (f": {x['reason']}" if x["status"] == "failed" else "")
        L.append(f"| {x['fraction']:g} | {x['num_clips']} | {x['num_units']} | {st} | {hl} | {tl} | `{x['log']}` |")
    s = r.get("scaling")
    if s and s.get("fit"):
        f, d = s["fit"], s["doubling"]
        L += ["", f"Fit: L(n) = {f['a']:.5g} · n^-{f['b']:.5g} + {f['c']:.5g} (rmse {f['rmse']:.3g}).",
              f"At the full library (n = {d['n']}): predicted {d['loss_at_n']:.5f}; at 2n: {d['loss_at_2n']:.5f} "
              f"(gain {d['gain']:.5f}, {100 * d['relative_gain']:.2f}%); gap to the asymptote c: {d['gap_to_asymptote']:.5f}."]
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
        ax.plot(s["n"], s["losses"], "o", label="held-out loss")
        if s.get("fit"):
            full = r["num_training_clips"]
            xs = np.geomspace(min(s["n"]), 2 * full, 100)
            ax.plot(xs, power_law(xs, s["fit"]), "-", label="fit a·n^-b + c")
            ax.axhline(s["fit"]["c"], ls=":", color="gray", label="asymptote c")
            ax.axvline(full, ls="--", color="gray", lw=0.8)
            ax.plot([2 * full], [s["doubling"]["loss_at_2n"]], "x", color="red", label="predicted at 2x data")
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
        "finished fractions. Every fraction trains with the same config (same train.max_steps).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--fractions", default="0.25,0.5,1.0", help="comma-separated fractions of the training set in (0, 1]")
    p.add_argument("--by", choices=("title", "clip"), default="title",
                   help="subset unit: whole titles (closer to 'fewer films') or single clips")
    p.add_argument("--seed", type=int, default=0, help="seed for the subset order and the memorization prompts")
    p.add_argument("--heldout", default=None, metavar="DIR",
                   help="held-out shard directory (default: validation.shards from the config)")
    p.add_argument("--samples", type=int, default=8, help="adapter samples for the memorization check (0 skips it)")
    p.add_argument("--gain-threshold", type=float, default=0.02,
                   help="verdict 'enough' when doubling the data is predicted to lower held-out loss by less than this fraction")
    p.add_argument("--memorization-threshold", type=float, default=0.7,
                   help="flag memorization when the train/held-out nearest-neighbour distance ratio is below this")
    p.add_argument("--sigma", type=float, default=10.0,
                   help="similarity bandwidth in Lab units for the effective number of distinct clips")
    add_training_arguments(p)
    p.set_defaults(func=_cmd)
