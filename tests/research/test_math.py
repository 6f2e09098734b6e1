"""The numbers behind the reports: power-law fit, doubling gain, subsets, effective number, memorization."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reelora.research import sufficiency as suf
from reelora.research import sweep


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


def test_doubling_gain():
    fit = {"a": 4.0, "b": 1.0, "c": 0.5}
    d = suf.doubling_gain(fit, 100)
    assert d["loss_at_n"] == pytest.approx(0.54) and d["loss_at_2n"] == pytest.approx(0.52)
    assert d["gain"] == pytest.approx(0.02) and d["relative_gain"] == pytest.approx(0.02 / 0.54)
    assert d["gap_to_asymptote"] == pytest.approx(0.04)


def test_verdict_follows_the_doubling_gain():
    def scaling(a, b, c, n=(25, 50, 100)):
        n = np.array(n, float)
        losses = list(a * n ** -b + c)
        fit = suf.fit_power_law(n, losses)
        return {"n": list(n), "losses": losses, "fit": fit, "doubling": suf.doubling_gain(fit, 100)}

    steep, _ = suf.verdict(scaling(5.0, 0.8, 0.1), None, None, gain_threshold=0.02)
    flat, _ = suf.verdict(scaling(0.01, 0.5, 1.0), None, None, gain_threshold=0.02)
    assert steep.startswith("NOT ENOUGH") and flat.startswith("ENOUGH")
    assert suf.verdict(None, None, None, 0.02)[0].startswith("INCONCLUSIVE")
    mem = {"flagged": True, "ratio": 0.1, "threshold": 0.7}
    assert any("MEMORIZATION" in r for r in suf.verdict(scaling(5.0, 0.8, 0.1), None, mem, 0.02)[1])


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
    from reelora.data.style import style_stats

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


def test_sweep_parsing_and_alpha():
    assert sweep.parse_ranks("4, 8,16") == [4, 8, 16]
    for bad in ("4,x", "0,4", "4,4", ""):
        with pytest.raises(ValueError, match="--ranks"):
            sweep.parse_ranks(bad)
    runs = [{"rank": 4, "heldout_loss": 1.005}, {"rank": 8, "heldout_loss": 1.0}, {"rank": 2, "heldout_loss": 1.2}]
    assert sweep.smallest_within(runs, 0.01) == 4 and sweep.smallest_within(runs, 0.001) == 8
    assert sweep.alpha_for(8, "equal", 4.0) == 8.0 and sweep.alpha_for(8, "fixed", 4.0) == 4.0
    assert suf.parse_fractions("1.0,0.25,0.5") == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="--fractions"):
        suf.parse_fractions("0,1")


def test_summarize_run_takes_the_last_record_per_step(tmp_path):
    (tmp_path / "logs").mkdir()
    recs = [{"step": 1, "train/loss": 2.0, "train/step_time": 9.0}, {"step": 2, "train/loss": 1.5, "train/step_time": 0.2},
            {"step": 2, "val/loss": 1.4, "val/loss_q0.5": 1.4},
            # resumed after a crash: step 2 again, then 3
            {"step": 2, "train/loss": 1.6, "train/step_time": 0.4}, {"step": 3, "train/loss": 1.2, "train/step_time": 0.3},
            {"step": 3, "val/loss": 1.3, "val/loss_q0.5": 1.3}]
    (tmp_path / "logs" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{\"step\": 4, \"trai")
    s = sweep.summarize_run(tmp_path)
    assert s["train_curve"] == [[1, 2.0], [2, 1.6], [3, 1.2]]
    assert s["heldout_loss"] == 1.3 and s["heldout_quantiles"] == {"0.5": 1.3}
    assert s["step_time_s"] == pytest.approx(0.35)  # median without the first step
    assert s["val_curve"] == [[2, 1.4], [3, 1.3]] and s["adapter_params"] is None


def test_write_subset_keeps_only_the_keys_and_loads(tmp_path, tiny_data):
    from reelora.data.shards import ShardSet

    index = suf.write_subset(tiny_data["train"], tmp_path / "sub", ["c0001", "c0006"])
    assert index["num_samples"] == 2
    assert [c.key for c in ShardSet(tmp_path / "sub").clips] == ["c0001", "c0006"]
    again = suf.write_subset(tiny_data["train"], tmp_path / "sub", ["c0006", "c0001"])
    assert again == index  # reused
    with pytest.raises(ValueError, match="nope"):
        suf.write_subset(tiny_data["train"], tmp_path / "sub2", ["nope"])
