"""reelora/research/sufficiency.py: the numbers behind the report (power-law fit, doubling gain, subsets,
effective number, memorization), then `reelora sufficiency` end to end with one real tiny-wan run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reelora.cli import main
from reelora.data.shards import ShardSet
from reelora.research import sufficiency as suf
from reelora.research.stats import (difference_interval, learned, mean_curve, mean_interval,
                                   paired_difference_interval, residual_std, still_falling)
from tests.research.conftest import ROOT

CONFIG = str(ROOT / "configs" / "tiny-wan.yaml")


def test_fake_runs_give_the_known_scaling_law(tmp_path, tiny_data, fake_train, capsys, monkeypatch):
    # the fake's held-out loss is 2 / n + 1 plus noise of sd 0.002 drawn from train.seed
    monkeypatch.setenv("FAKE_NOISE", "0.002")
    out = tmp_path / "suf"
    rc = main(["sufficiency", "--config", CONFIG, "--fractions", "0.25,0.5,1", "--by", "clip", "--samples", "0",
               "--seeds", "2", "--train-script", str(fake_train), "--out", str(out), f"data.shards={tiny_data['train']}",
               f"validation.shards={tiny_data['heldout']}", "train.seed=5"])
    assert rc == 0, capsys.readouterr().out
    res = json.loads((out / "sufficiency.json").read_text())
    assert [(r["num_clips"], r["seed"]) for r in res["runs"]] == [(2, 5), (2, 6), (4, 5), (4, 6), (8, 5), (8, 6)]
    keys = [[c.key for c in ShardSet(r["subset"]).clips] for r in res["runs"][::2]]
    assert all(set(a) <= set(b) for a, b in zip(keys, keys[1:])) and len(keys[-1]) == 8  # nested
    # seeds differ only in train.seed (the subset and everything else are the same)
    a, b = ((out / "runs" / "frac-0.25" / f"seed-{s}" / "calls.txt").read_text().split() for s in (5, 6))
    assert [x for x in a if x not in b] == ["train.seed=5", f"train.output_dir={out / 'runs' / 'frac-0.25' / 'seed-5'}"]
    s = res["scaling"]
    assert s["n"] == [2, 4, 8] and [i["n"] for i in s["intervals"]] == [2, 2, 2]
    assert s["losses"] == pytest.approx([2.0, 1.5, 1.25], abs=0.005)
    # the fit finds the law within the noise; doubling 8 -> 16 gains 0.125 of 1.25 = 10%
    assert (s["fit"]["a"], s["fit"]["b"], s["fit"]["c"]) == pytest.approx((2.0, 1.0, 1.0), rel=0.05)
    lo, hi = s["bootstrap"]["relative_gain"]
    assert lo < 0.1 < hi and hi - lo < 0.03
    # backtest, a known answer: a plain power law through (2, 2.0) and (4, 1.5) predicts 1.125 at 8, not 1.25
    bt = s["backtest"]
    assert bt["fit_on"] == [2, 4] and bt["predicted"] == pytest.approx(1.125, abs=0.01)
    assert bt["relative_error"] == pytest.approx(-0.1, abs=0.01) and bt["within_noise"] is False
    assert res["verdict"].startswith("MORE DATA HELPS") and "(95% interval" in res["verdict"]
    assert res["memorization"] is None and res["heldout_overlap"] == 0 and res["heldout_clips_in_loss"] == 2
    dv = res["diversity"]
    assert dv["num_clips"] == 8 and dv["num_titles"] == 4 and dv["effective_titles"] == pytest.approx(4.0)
    assert 1.0 <= dv["effective_clips"] <= 8.0
    md = (out / "sufficiency.md").read_text()
    assert "**MORE DATA HELPS" in md and "L(n) = 2" in md and "Backtest: fitted on n = 2, 4 only" in md
    assert "## Diversity" in md and "Not measured" in md and "How to read this" in md
    assert (out / "sufficiency.png").stat().st_size > 1000
    # calls see the subset, the held-out shards and their seed
    call = (out / "runs" / "frac-0.25" / "seed-5" / "calls.txt").read_text()
    assert f"data.shards={out / 'subsets' / 'frac-0.25'}" in call and f"validation.shards={tiny_data['heldout']}" in call


def test_undertrained_fake_runs_are_inconclusive(tmp_path, tiny_data, fake_train, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_FALLING", "1")  # train loss 1/step: still going down at step 20
    out = tmp_path / "suf"
    assert main(["sufficiency", "--config", CONFIG, "--fractions", "0.5,1", "--by", "clip", "--samples", "0", "--seeds", "2",
                 "--train-script", str(fake_train), "--out", str(out), f"data.shards={tiny_data['train']}",
                 f"validation.shards={tiny_data['heldout']}", "train.max_steps=20"]) == 0
    res = json.loads((out / "sufficiency.json").read_text())
    assert res["verdict"].startswith("INCONCLUSIVE: runs too short") and "train.max_steps (e.g. to 80)" in res["verdict"]
    assert [t["falling"] for t in res["scaling"]["training"]] == [True, True]
    assert "| **yes** (fell " in (out / "sufficiency.md").read_text()


def test_missing_heldout_or_training_shards_are_named(tmp_path, tiny_data, capsys):
    assert main(["sufficiency", "--config", CONFIG, "--out", str(tmp_path / "o"), f"data.shards={tiny_data['train']}"]) == 2
    assert "validation.shards" in capsys.readouterr().err
    assert main(["sufficiency", "--config", CONFIG, "--out", str(tmp_path / "o"), f"validation.shards={tiny_data['heldout']}"]) == 2
    assert "data.shards" in capsys.readouterr().err
    assert main(["sufficiency", "--config", CONFIG, "--out", str(tmp_path / "o"), "--heldout", str(tmp_path / "nope"),
                 f"data.shards={tiny_data['train']}"]) == 2
    assert "--heldout" in capsys.readouterr().err
    assert main(["sufficiency", "--config", CONFIG, "--out", str(tmp_path / "o"), "--fractions", "0.5,2",
                 f"data.shards={tiny_data['train']}", f"validation.shards={tiny_data['heldout']}"]) == 2
    assert "--fractions" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["sufficiency", "--help"])
    text = capsys.readouterr().out
    for opt in ("--fractions", "--by", "--seed", "--heldout", "--samples", "--gain-threshold",
                "--memorization-threshold", "--sigma", "--config", "--out", "--launch", "--train-script", "--timeout",
                "--seeds", "--level"):
        assert opt in text
    assert "(default: 3)" in text and "(default: 0.95)" in text and "MORE DATA HELPS" in text


def test_real_sufficiency_on_tiny_wan(tmp_path, tiny_data, capsys):
    out = tmp_path / "suf"
    args = ["sufficiency", "--config", CONFIG, "--fractions", "0.5,1.0", "--by", "title", "--samples", "2",
            "--out", str(out), f"data.shards={tiny_data['train']}", f"validation.shards={tiny_data['heldout']}",
            "train.max_steps=2", "train.checkpoint_every=0", "validation.prompts=[]", "log.progress_bar=false", "--seeds", "1"]
    assert main(args) == 0, capsys.readouterr().out
    res = json.loads((out / "sufficiency.json").read_text())
    assert [(r["status"], r["num_units"], r["num_clips"]) for r in res["runs"]] == [("done", 2, 4), ("done", 4, 8)]
    assert all(0 < r["heldout_loss"] < 10 for r in res["runs"])
    assert res["scaling"]["fit"]["c_fixed"]  # two sizes: plain power law
    # one seed: no noise estimate, so no finding (2 logged steps are too few to judge the train curve)
    assert res["verdict"].startswith("INCONCLUSIVE: no estimate of run-to-run noise") and "--seeds 3" in res["verdict"]
    m = res["memorization"]
    assert m["num_samples"] == 2 and m["num_train"] == 8 and m["num_heldout"] == 2 and m["ratio"] > 0
    assert m["adapter"] == str(out / "runs" / "frac-1" / "seed-0" / "adapter")
    assert sorted(p.name for p in (out / "samples").glob("*.mp4")) == ["sample-00.mp4", "sample-01.mp4"]
    assert "## Memorization" in (out / "sufficiency.md").read_text() and (out / "sufficiency.png").is_file()
    # rerun: both fractions are skipped
    capsys.readouterr()
    assert main([*args[:8], "0", *args[9:]]) == 0
    assert capsys.readouterr().out.count("already finished") == 2


def test_fractions_that_round_to_the_same_subset_train_once(tmp_path, tiny_data, fake_train, capsys):
    out = tmp_path / "suf"
    assert main(["sufficiency", "--config", CONFIG, "--fractions", "0.2,0.25,1", "--samples", "0", "--seeds", "1", "--train-script",
                 str(fake_train), "--out", str(out), f"data.shards={tiny_data['train']}",
                 f"validation.shards={tiny_data['heldout']}"]) == 0
    assert "selects the same 1 titles" in capsys.readouterr().out
    res = json.loads((out / "sufficiency.json").read_text())
    assert [(r["fraction"], r["num_units"]) for r in res["runs"]] == [(0.25, 1), (1.0, 4)]


# --------------------------------------------------------------------------------------------- the numbers


@pytest.mark.parametrize("a,b,c", [(2.0, 0.5, 0.3), (5.0, 1.2, 0.05), (0.8, 0.3, 1.1)])
def test_power_law_fit_recovers_exact_parameters(a, b, c):
    n = np.array([10, 20, 40, 80, 160, 320], float)
    fit = suf.fit_power_law(n, a * n ** -b + c)
    assert fit["a"] == pytest.approx(a, rel=1e-4)
    assert fit["b"] == pytest.approx(b, rel=1e-4)
    assert fit["c"] == pytest.approx(c, rel=1e-4, abs=1e-7)
    assert fit["rmse"] < 1e-8 and not fit["c_fixed"]


def test_power_law_fit_three_points_and_two_points():
    n = np.array([25, 50, 100], float)
    fit = suf.fit_power_law(n, 3.0 * n ** -0.7 + 0.2)
    assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((3.0, 0.7, 0.2), rel=1e-3)
    # two sizes cannot identify c: a plain power law through both points
    fit2 = suf.fit_power_law([10, 40], [1.0, 0.5])
    assert fit2["c_fixed"] and fit2["c"] == 0.0 and fit2["b"] == pytest.approx(0.5)
    assert fit2["a"] == pytest.approx(math.sqrt(10))


def test_power_law_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        suf.fit_power_law([10], [1.0])
    with pytest.raises(ValueError, match="finite"):
        suf.fit_power_law([10, 20, 40], [1.0, float("nan"), 0.5])


def test_doubling_gain_and_the_gap_only_when_c_is_identified():
    fit = {"a": 4.0, "b": 1.0, "c": 0.5, "c_fixed": False}
    d = suf.doubling_gain(fit, 100)
    assert d["loss_at_n"] == pytest.approx(0.54) and d["loss_at_2n"] == pytest.approx(0.52)
    assert d["gain"] == pytest.approx(0.02) and d["relative_gain"] == pytest.approx(0.02 / 0.54)
    assert d["gap_to_asymptote"] == pytest.approx(0.04)
    # c fixed at 0 (two sizes) or fitted at its bound 0: "gap to c" would repeat the prediction; it is not reported
    assert suf.doubling_gain({**fit, "c": 0.0, "c_fixed": True}, 100)["gap_to_asymptote"] is None
    assert suf.doubling_gain({**fit, "c": 0.0}, 100)["gap_to_asymptote"] is None


def test_law_formatting_has_one_sign_on_the_exponent():
    # the flat curve: a rising fit printed as n^--0.0001276
    assert suf.format_law({"a": 1.4, "b": -0.0001276, "c": 0.0, "c_fixed": True}) == "L(n) = 1.4 · n^+0.0001276"
    assert suf.format_law({"a": 2.0, "b": 0.5, "c": 1.0, "c_fixed": False}) == "L(n) = 2 · n^-0.5 + 1"


# ----------------------------------------------------------------- known answers from a fake trainer (in-process)

SIZES = (25, 50, 100, 200)


def law(n):
    return 2.0 * np.asarray(n, float) ** -0.5 + 1.0


TRUE_GAIN = float((law(200) - law(400)) / law(200))  # 3.63% from doubling 200 -> 400 clips


def fake_runs(curve, rng, noise, seeds=3, sizes=SIZES, falling=False, steps=40):
    """What summarize_run reads from a fake trainer: held-out loss = curve(n) + N(0, noise) per seed, and a train
    loss that fell and flattened (or, `falling`, still goes down as 1/step) with a little per-step noise."""
    runs = []
    for n in sizes:
        for s in range(seeds):
            train = [[t, (2.0 / t if falling else 0.5 + 1.5 * np.exp(-t / 3)) + rng.normal(0, 0.001)]
                     for t in range(1, steps + 1)]
            runs.append({"num_clips": n, "seed": s, "heldout_loss": float(curve(n) + rng.normal(0, noise)),
                         "train_curve": train})
    return runs


def judge(runs, seed=0, draws=500):
    s = suf.scaling_summary(runs, max(SIZES), seed=seed, draws=draws)
    return s, suf.scaling_verdict(s, gain_threshold=0.02, max_steps=40)


def test_mean_and_difference_intervals_cover_at_their_nominal_rate():
    rng = np.random.default_rng(0)
    for level in (0.95, 0.8):
        hits = [(iv["low"] <= 1.3 <= iv["high"])
                for iv in (mean_interval(rng.normal(1.3, 0.05, 3), level) for _ in range(4000))]
        assert abs(np.mean(hits) - level) < 0.02, (level, np.mean(hits))
    # Welch (3 seeds a side, as the tools run; spreads differ 3x), true difference 0.02
    hits = [(d["low"] <= 0.02 <= d["high"]) for d in
            (difference_interval(rng.normal(1.02, 0.03, 3), rng.normal(1.0, 0.01, 3)) for _ in range(3000))]
    assert abs(np.mean(hits) - 0.95) < 0.02, np.mean(hits)
    assert mean_interval([1.0])["low"] is None and difference_interval([1.0], [1.0, 2.0]) is None


def test_doubling_gain_interval_covers_the_true_gain_at_about_its_nominal_rate():
    rng = np.random.default_rng(1)
    hits = []
    for e in range(100):
        groups = [list(law(n) + rng.normal(0, 0.01, 3)) for n in SIZES]
        lo, hi = suf.bootstrap_scaling(SIZES, groups, 200, draws=200, seed=e)["relative_gain"]
        hits.append(lo <= TRUE_GAIN <= hi)
    assert 0.88 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_clear_law_gives_more_data_helps_with_the_right_doubling_gain():
    rng = np.random.default_rng(2)
    for e in range(5):
        s, (label, sentence, reasons) = judge(fake_runs(law, rng, noise=0.003), seed=e)
        assert label == "MORE DATA HELPS", sentence
        lo, hi = s["bootstrap"]["relative_gain"]
        assert lo <= TRUE_GAIN <= hi and hi - lo < 0.02
        assert s["doubling"]["relative_gain"] == pytest.approx(TRUE_GAIN, abs=0.005)
        assert abs(s["backtest"]["relative_error"]) < 0.01 and s["effect"]["significant"]
        assert f"{100 * s['doubling']['relative_gain']:.2f}%" in sentence and "95% interval" in sentence


def test_pure_noise_gives_inconclusive():
    rng = np.random.default_rng(3)
    for e in range(10):
        s, (label, sentence, _) = judge(fake_runs(lambda n: 1.4, rng, noise=0.05), seed=e)
        assert label == "INCONCLUSIVE" and sentence.startswith("within noise"), sentence
        assert "more seeds" in sentence


def test_a_flat_curve_measured_precisely_is_enough():
    rng = np.random.default_rng(4)
    s, (label, sentence, _) = judge(fake_runs(lambda n: 1.4, rng, noise=0.002))
    assert label == "ENOUGH" and "below the 2% threshold at this training budget (40 steps" in sentence
    assert s["bootstrap"]["relative_gain"][1] < 0.02


def test_undertrained_runs_give_inconclusive():
    rng = np.random.default_rng(5)
    s, (label, sentence, _) = judge(fake_runs(law, rng, noise=0.003, falling=True))
    assert label == "INCONCLUSIVE" and sentence.startswith("runs too short"), sentence
    assert "raise train.max_steps (e.g. to 160)" in sentence
    assert all(t["falling"] for t in s["training"])


def test_runs_that_learned_nothing_give_inconclusive():
    # the case: flat held-out loss at every size because the train loss never moved
    rng = np.random.default_rng(10)
    runs = fake_runs(lambda n: 1.4, rng, noise=0.0003)
    for r in runs:
        r["train_curve"] = [[t, 1.4 + rng.normal(0, 0.03)] for t in range(1, 31)]
    s, (label, sentence, _) = judge(runs)
    assert label == "INCONCLUSIVE" and sentence.startswith("runs too short to learn"), sentence
    assert not any(t["learned"] for t in s["training"]) and "or optim.lr" in sentence


def test_one_seed_gives_inconclusive_and_no_interval():
    rng = np.random.default_rng(6)
    s, (label, sentence, _) = judge(fake_runs(law, rng, noise=0.003, seeds=1))
    assert label == "INCONCLUSIVE" and "one seed per fraction" in sentence and "--seeds 3" in sentence
    assert s["bootstrap"] is None and s["effect"] is None and s["intervals"][0]["low"] is None


def test_still_falling():
    rng = np.random.default_rng(7)
    flat = [[t, 0.5 + rng.normal(0, 0.05)] for t in range(1, 41)]
    falling = [[t, 2.0 / t + rng.normal(0, 0.005)] for t in range(1, 41)]
    assert still_falling(flat)["falling"] is False
    r = still_falling(falling)
    assert r["falling"] is True and r["steps"] == [21, 40] and r["drop"] > 0.3
    assert still_falling(falling[:5])["falling"] is None
    assert learned(falling)["learned"] is True and learned(flat)["learned"] is False and learned(flat[:8])["learned"] is None
    assert mean_curve([[[1, 1.0], [2, 3.0]], [[1, 3.0], [2, 5.0], [3, 1.0]]]) == [[1, 2.0], [2, 4.0]]


def test_verdict_adds_diversity_and_memorization_reasons():
    runs = fake_runs(law, np.random.default_rng(8), noise=0.003)
    s = suf.scaling_summary(runs, 200, draws=200)
    mem = {"flagged": True, "ratio": 0.1, "threshold": 0.7}
    answer, reasons = suf.verdict(s, None, mem, 0.02, 40)
    assert answer.startswith("MORE DATA HELPS: doubling") and any("MEMORIZATION" in r for r in reasons)
    assert suf.verdict(None, None, None, 0.02)[0].startswith("INCONCLUSIVE: fewer than two fractions")


def test_seed_offsets_shared_by_every_fraction_do_not_widen_the_gain_interval():
    # each seed shifts every fraction's loss alike (same validation noise): the gain does not depend on it
    rng = np.random.default_rng(11)
    offsets = rng.normal(0, 0.05, 3)
    by_seed = [{s: float(law(n) + o + rng.normal(0, 0.001)) for s, o in enumerate(offsets)} for n in SIZES]
    sd, df = residual_std(by_seed)
    assert sd < 0.002 and df == 6
    lo, hi = suf.bootstrap_scaling(SIZES, by_seed, 200, draws=500)["relative_gain"]
    assert lo <= TRUE_GAIN <= hi and hi - lo < 0.01
    wide = suf.bootstrap_scaling(SIZES, [list(g.values()) for g in by_seed], 200, draws=500)["relative_gain"]
    assert wide[1] - wide[0] > 5 * (hi - lo)  # unpaired, the offsets would pass for noise
    eff = paired_difference_interval(by_seed[0], by_seed[-1])
    assert eff["paired"] and eff["significant"] and eff["difference"] == pytest.approx(law(25) - law(200), abs=0.003)


def test_bootstrap_needs_two_seeds_somewhere_and_fit_batch_matches_single_fits():
    assert suf.bootstrap_scaling(SIZES, [[1.3], [1.2], [1.1], [1.05]], 200) is None
    rng = np.random.default_rng(9)
    Y = law(SIZES)[None, :] + rng.normal(0, 0.01, (5, 4))
    batch = suf.fit_power_law_batch(SIZES, Y, grid=2001, refine=200)
    for i in range(5):
        one = suf.fit_power_law(SIZES, Y[i])
        assert (batch["a"][i], batch["b"][i], batch["c"][i]) == pytest.approx((one["a"], one["b"], one["c"]), rel=1e-9)


def test_parse_fractions():
    assert suf.parse_fractions("1.0,0.25,0.5") == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="--fractions"):
        suf.parse_fractions("0,1")


def test_nested_subsets_are_nested_deterministic_and_sized():
    units = [f"t{i}" for i in range(10)]
    s = suf.nested_subsets(units, [0.25, 0.5, 1.0], seed=3)
    assert [len(s[f]) for f in (0.25, 0.5, 1.0)] == [3, 5, 10]
    assert set(s[0.25]) <= set(s[0.5]) <= set(s[1.0]) == set(units)
    assert s == suf.nested_subsets(list(reversed(units)), [0.25, 0.5, 1.0], seed=3)  # input order is irrelevant
    assert s != suf.nested_subsets(units, [0.25, 0.5, 1.0], seed=4)
    assert len(suf.nested_subsets(units, [0.01], seed=0)[0.01]) == 1
    with pytest.raises(ValueError, match="fractions"):
        suf.nested_subsets(units, [1.5], seed=0)


def test_effective_number_identical_distinct_and_groups():
    rng = np.random.default_rng(0)
    point = rng.normal(size=48)
    assert suf.effective_number(np.stack([point] * 6)) == pytest.approx(1.0)
    far = np.eye(5) * 1e4  # pairwise distances >> sigma
    assert suf.effective_number(far) == pytest.approx(5.0)
    groups = np.stack([far[0]] * 3 + [far[1]] * 3)
    assert suf.effective_number(groups) == pytest.approx(2.0)
    assert suf.effective_count([5, 5, 5, 5]) == pytest.approx(4.0)
    assert suf.effective_count([100, 0]) == pytest.approx(1.0)


def test_pairwise_distance_is_rms_lab_per_cell():
    a = np.zeros((1, 6))  # two cells
    b = np.array([[3.0, 4.0, 0.0, 3.0, 4.0, 0.0]])  # each cell 5 Lab units away
    assert suf.pairwise_distances(a, b)[0, 0] == pytest.approx(5.0)


def test_clip_feature_compares_across_sizes_and_lengths():
    flat = np.full((9, 64, 48, 3), 128, np.uint8)
    small = np.full((5, 32, 32, 3), 128, np.uint8)
    assert np.allclose(suf.clip_feature(flat), suf.clip_feature(small))
    red = small.copy()
    red[..., 0] = 255
    assert suf.pairwise_distances(suf.clip_feature(flat)[None], suf.clip_feature(red)[None])[0, 0] > 20
    with pytest.raises(ValueError, match="F, H, W, 3"):
        suf.clip_feature(np.zeros((32, 32, 3)))


def test_memorization_flags_copies_and_not_fresh_clips():
    rng = np.random.default_rng(1)
    train, held = rng.normal(0, 20, (12, 30)), rng.normal(0, 20, (6, 30))
    copied = suf.memorization(train[:4], train, held)
    assert copied["ratio"] < 1e-6 and copied["flagged"] and copied["closer_to_train_fraction"] == 1.0
    assert copied["num_train"] == 12 and copied["min_nn_train"] < 1e-6
    like_heldout = suf.memorization(held, train, held)
    assert like_heldout["ratio"] > 1 and not like_heldout["flagged"]
    fresh = suf.memorization(rng.normal(0, 20, (200, 30)), train, held, repeats=50)
    assert 0.8 < fresh["ratio_equal_size"] < 1.25 and not fresh["flagged"]  # same distribution: no preference
    assert fresh["ratio"] < fresh["ratio_equal_size"]  # more training candidates: closer by chance
    same = suf.memorization(train[:2], train[:2], train[:2])
    assert same["ratio"] == 1.0 and not same["flagged"]


def test_diversity_counts_titles_and_distinct_clips():
    from reelora.demo.style import style_stats

    red = np.zeros((3, 16, 16, 3), np.uint8)
    red[..., 0] = 220
    blue = np.zeros((3, 16, 16, 3), np.uint8)
    blue[..., 2] = 220
    clips = [red, red, red, blue]
    feats = np.stack([suf.clip_feature(c) for c in clips])
    d = suf.diversity(feats, [style_stats([c]).to_dict() for c in clips], ["x", "x", "y", "y"])
    assert d["num_clips"] == 4 and d["num_titles"] == 2 and d["effective_titles"] == pytest.approx(2.0)
    # three copies + one other: between 1 and 2 effective clips, exactly the Vendi value of weights 3/4, 1/4
    p = np.array([0.75, 0.25])
    assert d["effective_clips"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert d["style_spread"]["saturation"]["std"] > 0


def test_write_subset_keeps_only_the_keys_and_loads(tmp_path, tiny_data):
    from reelora.data.shards import ShardSet

    index = suf.write_subset(tiny_data["train"], tmp_path / "sub", ["c0001", "c0006"])
    assert index["num_samples"] == 2
    assert [c.key for c in ShardSet(tmp_path / "sub").clips] == ["c0001", "c0006"]
    again = suf.write_subset(tiny_data["train"], tmp_path / "sub", ["c0006", "c0001"])
    assert again == index  # reused
    with pytest.raises(ValueError, match="nope"):
        suf.write_subset(tiny_data["train"], tmp_path / "sub2", ["nope"])
