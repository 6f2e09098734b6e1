"""`reelora sufficiency`: nested subsets, the scaling fit end to end, the report; one real tiny-wan run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reelora.cli import main
from reelora.data.shards import ShardSet
from tests.research.conftest import ROOT

CONFIG = str(ROOT / "configs" / "tiny-wan.yaml")


def test_fake_runs_give_the_known_scaling_law(tmp_path, tiny_data, fake_train, capsys):
    out = tmp_path / "suf"
    rc = main(["sufficiency", "--config", CONFIG, "--fractions", "0.25,0.5,0.75,1", "--by", "clip", "--samples", "0",
               "--train-script", str(fake_train), "--out", str(out), f"data.shards={tiny_data['train']}",
               f"validation.shards={tiny_data['heldout']}"])
    assert rc == 0, capsys.readouterr().out
    res = json.loads((out / "sufficiency.json").read_text())
    assert [r["num_clips"] for r in res["runs"]] == [2, 4, 6, 8]
    keys = [[c.key for c in ShardSet(r["subset"]).clips] for r in res["runs"]]
    assert all(set(a) <= set(b) for a, b in zip(keys, keys[1:])) and len(keys[-1]) == 8  # nested
    # the fake's held-out loss is exactly 2 / n + 1: the fit must find it, and doubling 8 -> 16 gains 0.125
    fit = res["scaling"]["fit"]
    assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((2.0, 1.0, 1.0), rel=1e-4)
    d = res["scaling"]["doubling"]
    assert d["loss_at_n"] == pytest.approx(1.25) and d["gain"] == pytest.approx(0.125, rel=1e-4)
    assert res["verdict"].startswith("NOT ENOUGH") and "10.0%" in res["verdict"]
    assert res["memorization"] is None and res["heldout_overlap"] == 0 and res["heldout_clips_in_loss"] == 2
    dv = res["diversity"]
    assert dv["num_clips"] == 8 and dv["num_titles"] == 4 and dv["effective_titles"] == pytest.approx(4.0)
    assert 1.0 <= dv["effective_clips"] <= 8.0
    md = (out / "sufficiency.md").read_text()
    assert "**NOT ENOUGH" in md and "L(n) = 2" in md and "## Diversity" in md and "Not measured" in md
    assert (out / "sufficiency.png").stat().st_size > 1000
    # calls see the subset, the held-out shards and the forced final validation
    call = (out / "runs" / "frac-0.25" / "calls.txt").read_text()
    assert f"data.shards={out / 'subsets' / 'frac-0.25'}" in call and f"validation.shards={tiny_data['heldout']}" in call


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
                "--memorization-threshold", "--sigma", "--config", "--out", "--launch", "--train-script", "--timeout"):
        assert opt in text


def test_real_sufficiency_on_tiny_wan(tmp_path, tiny_data, capsys):
    out = tmp_path / "suf"
    args = ["sufficiency", "--config", CONFIG, "--fractions", "0.5,1.0", "--by", "title", "--samples", "2",
            "--out", str(out), f"data.shards={tiny_data['train']}", f"validation.shards={tiny_data['heldout']}",
            "train.max_steps=2", "train.checkpoint_every=0", "validation.prompts=[]", "log.progress_bar=false"]
    assert main(args) == 0, capsys.readouterr().out
    res = json.loads((out / "sufficiency.json").read_text())
    assert [(r["status"], r["num_units"], r["num_clips"]) for r in res["runs"]] == [("done", 2, 4), ("done", 4, 8)]
    assert all(0 < r["heldout_loss"] < 10 for r in res["runs"])
    assert res["scaling"]["fit"]["c_fixed"]  # two sizes: plain power law
    assert res["verdict"].split(":")[0] in ("ENOUGH", "NOT ENOUGH", "ENOUGH for this training budget")
    m = res["memorization"]
    assert m["num_samples"] == 2 and m["num_train"] == 8 and m["num_heldout"] == 2 and m["ratio"] > 0
    assert m["adapter"] == str(out / "runs" / "frac-1" / "adapter")
    assert sorted(p.name for p in (out / "samples").glob("*.mp4")) == ["sample-00.mp4", "sample-01.mp4"]
    assert "## Memorization" in (out / "sufficiency.md").read_text() and (out / "sufficiency.png").is_file()
    # rerun: both fractions are skipped
    capsys.readouterr()
    assert main([*args[:8], "0", *args[9:]]) == 0
    assert capsys.readouterr().out.count("already finished") == 2


def test_fractions_that_round_to_the_same_subset_train_once(tmp_path, tiny_data, fake_train, capsys):
    out = tmp_path / "suf"
    assert main(["sufficiency", "--config", CONFIG, "--fractions", "0.2,0.25,1", "--samples", "0", "--train-script",
                 str(fake_train), "--out", str(out), f"data.shards={tiny_data['train']}",
                 f"validation.shards={tiny_data['heldout']}"]) == 0
    assert "selects the same 1 titles" in capsys.readouterr().out
    res = json.loads((out / "sufficiency.json").read_text())
    assert [(r["fraction"], r["num_units"]) for r in res["runs"]] == [(0.25, 1), (1.0, 4)]
