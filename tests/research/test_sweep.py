"""reelora/research/sweep.py: `reelora sweep` (per-rank runs, skip on rerun, failed ranks reported, comparison
files; one real tiny-wan run), rank parsing and run summaries."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from reelora.cli import main
from reelora.research import sweep as sw
from reelora.research.stats import mean_interval
from tests.research.conftest import ROOT

CONFIG = str(ROOT / "configs" / "tiny-wan.yaml")


def sweep(tmp_path, fake_train, *extra, overrides=(), seeds="1"):
    return main(["sweep", "--config", CONFIG, "--out", str(tmp_path / "sw"), "--train-script", str(fake_train),
                 "--no-grid", "--seeds", seeds, *extra, "data.shards=unused", "train.max_steps=3", *overrides])


def test_fake_sweep_compares_ranks_and_reports_a_failed_one(tmp_path, fake_train, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_FAIL_RANK", "8")
    rc = sweep(tmp_path, fake_train, "--ranks", "2,8,4", overrides=["validation.every=0"])
    out = capsys.readouterr().out
    assert rc == 1  # a rank failed
    assert "[rank 8, seed 0 (2/3)] FAILED" in out and "simulated out of memory" in out
    res = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    by_rank = {r["rank"]: r for r in res["runs"]}
    assert [r["rank"] for r in res["runs"]] == [2, 8, 4]
    assert by_rank[8]["status"] == "failed" and "simulated out of memory" in by_rank[8]["reason"]
    assert by_rank[8]["log"] == str(tmp_path / "sw" / "rank-8" / "seed-0" / "train.log")
    assert res["failed"] == [{"rank": 8, "seed": 0, "reason": by_rank[8]["reason"], "log": by_rank[8]["log"]}]
    # the fake's held-out loss is 1/rank + 0.5, its adapter 32 * rank parameters, its peak memory 0.1 * rank
    assert by_rank[4]["heldout_loss"] == pytest.approx(0.75) and res["best_rank"] == 4
    assert by_rank[2]["adapter_params"] == 64 and by_rank[4]["adapter_params"] == 128
    assert by_rank[4]["heldout_quantiles"] == {"0.1": pytest.approx(0.65), "0.9": pytest.approx(0.85)}
    assert by_rank[4]["train_curve"][-1] == [3, pytest.approx(1 / 12)] and by_rank[4]["step_time_s"] == pytest.approx(0.04)
    assert by_rank[2]["alpha"] == 2.0 and res["alpha_mode"] == "equal"
    # one seed: no noise estimate, so the sweep names the lowest mean but claims no difference
    assert not res["comparison"]["noise_known"] and res["comparison"]["pick"] is None
    calls = (tmp_path / "sw" / "rank-4" / "seed-0" / "calls.txt").read_text()
    # validation forced on at the last step (validation.every=0 would leave no held-out loss)
    assert "lora.rank=4 lora.alpha=4 train.seed=0" in calls and "train.resume=latest" in calls and "validation.every=3" in calls
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "| 4 **(best)** | 4 | 1/1 | 0.75000 | — | 0.75000 |" in md and "rank 8, seed 0: exit code 1" in md
    assert "no estimate of run-to-run noise" in md and "| 0.40 | 128 | 728 B |" in md  # memory, params, size
    assert "held-out\" loss is measured on training clips" in md  # no validation.shards in the config
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 1000

    # Rerun: finished runs are skipped, the failed one runs again (and now succeeds).
    monkeypatch.delenv("FAKE_FAIL_RANK")
    assert sweep(tmp_path, fake_train, "--ranks", "2,8,4", overrides=["validation.every=0"]) == 0
    out = capsys.readouterr().out
    assert "[rank 2, seed 0 (1/3)] already finished" in out and "[rank 4, seed 0 (3/3)] already finished" in out
    assert len((tmp_path / "sw" / "rank-2" / "seed-0" / "calls.txt").read_text().splitlines()) == 1
    res = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["status"] for r in res["runs"]] == ["skipped", "done", "skipped"] and res["best_rank"] == 8
    # a rerun with other settings must not silently reuse the old runs
    assert sweep(tmp_path, fake_train, "--ranks", "2", overrides=["validation.every=0", "optim.lr=0.5"]) == 2
    assert "holds a finished run with other settings" in capsys.readouterr().err


def test_seeds_give_intervals_and_a_pick_only_beyond_noise(tmp_path, fake_train, monkeypatch, capsys):
    # held-out loss 1/rank + 0.5 + N(0, 0.01) per (seed, rank): ranks 2 and 4 differ by 0.25, 16 and 32 by 0.03
    monkeypatch.setenv("FAKE_NOISE", "0.01")
    assert sweep(tmp_path, fake_train, "--ranks", "2,16,32", "--tolerance", "0.1", seeds="2") == 0
    res = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert res["seeds"] == [0, 1] and len(res["runs"]) == 6
    per = {r["rank"]: r for r in res["per_rank"]}
    for rank, r in per.items():
        assert r["ok"] == 2 and r["heldout"]["low"] < 1 / rank + 0.5 < r["heldout"]["high"]
        assert r["peak_mem_gb"] == pytest.approx(0.1 * rank) and r["adapter_params"] == 32 * rank
    c = res["comparison"]
    assert c["noise_known"] and c["resolved"] and c["worse"] == [2]
    assert c["differences"]["2"]["low"] > 0.3 and c["differences"]["2"]["paired"]  # JSON keys are strings
    # 16 is within 10% of the best (32 or 16, within noise of each other): the smallest such rank
    assert c["pick"] == 16 and set(c["tied"]) | {16} >= {16, 32}
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "Smallest rank within 10% of the best: rank 16" in md and "paired by train.seed" in md
    # seeds differ only in train.seed
    a, b = ((tmp_path / "sw" / "rank-16" / f"seed-{s}" / "calls.txt").read_text().split() for s in (0, 1))
    assert sorted(x for x in a if x not in b) == ["train.output_dir=" + str(tmp_path / "sw" / "rank-16" / "seed-0"),
                                                  "train.seed=0"]


def test_compare_ranks_claims_nothing_within_noise():
    def rank(r, losses):
        return {"rank": r, "losses": losses, "heldout": mean_interval(losses)}

    # 2% apart, noise 5%: the "rank 8 best on a 2% difference" is not a finding
    rng = np.random.default_rng(0)
    tied = sw.compare_ranks([rank(2, list(1.02 + rng.normal(0, 0.05, 3))), rank(8, list(1.0 + rng.normal(0, 0.05, 3)))],
                            0.01, 0.95)
    assert not tied["resolved"] and tied["pick"] is None and tied["worse"] == []
    assert "cannot tell ranks 2, 8 apart" in tied["message"]
    # clearly apart: rank 2 worse beyond noise, rank 4 within 1% of 8 -> pick 4
    clear = sw.compare_ranks([rank(2, [1.2, 1.21, 1.19]), rank(4, [1.004, 1.005, 1.006]), rank(8, [1.0, 1.001, 0.999])],
                             0.01, 0.95)
    assert clear["resolved"] and clear["best"] == 8 and 2 in clear["worse"] and clear["pick"] == 4
    assert sw.compare_ranks([rank(4, [1.0])], 0.01, 0.95)["message"].startswith("only rank 4")
    # a seed's offset (validation noise, data order) is shared by every rank: paired by seed, a steady 0.02 gap
    # is beyond noise even though the seeds spread by 0.05 (an unpaired comparison would call them tied)
    offsets = {0: 0.05, 1: -0.04, 2: 0.0}
    paired = [{**rank(r, [base + o + e for o, e in zip(offsets.values(), jitter)]),
               "by_seed": {s: base + o + e for (s, o), e in zip(offsets.items(), jitter)}}
              for r, base, jitter in ((2, 1.02, (0.001, -0.001, 0.0)), (8, 1.0, (0.0, 0.001, -0.001)))]
    c = sw.compare_ranks(paired, 0.01, 0.95)
    assert c["worse"] == [2] and c["differences"][2]["paired"] and c["pick"] == 8
    assert not sw.difference_interval(paired[0]["losses"], paired[1]["losses"])["significant"]


def test_plot_sample_grid_rows_and_columns(tmp_path):
    clip = np.zeros((5, 16, 16, 3), np.uint8)
    sw.plot_sample_grid([("base", [clip, clip]), ("rank 4", None), ("rank 8", [clip + 200, clip])],
                        ["a red room\nseed 0", "a red room\nseed 1"], tmp_path / "g.png")
    from PIL import Image

    w, h = Image.open(tmp_path / "g.png").size
    assert h > w / 2 and (tmp_path / "g.png").stat().st_size > 1000


def test_fixed_alpha_and_custom_launcher(tmp_path, fake_train, capsys):
    launch = f"{shlex.quote(sys.executable)} -u"
    assert sweep(tmp_path, fake_train, "--ranks", "2,4", "--alpha", "8", "--launch", launch) == 0
    res = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert res["alpha_mode"] == "fixed" and [r["alpha"] for r in res["runs"]] == [8.0, 8.0]
    assert "-u " in capsys.readouterr().out
    # a lora.alpha override also means one alpha for all ranks
    assert main(["sweep", "--config", CONFIG, "--out", str(tmp_path / "sw2"), "--train-script", str(fake_train),
                 "--ranks", "4", "--seeds", "1", "--no-grid", "lora.alpha=2", "data.shards=x"]) == 0
    assert json.loads((tmp_path / "sw2" / "sweep.json").read_text())["runs"][0]["alpha"] == 2.0


def test_missing_launcher_is_a_failed_rank_not_a_crash(tmp_path, fake_train, capsys):
    assert sweep(tmp_path, fake_train, "--ranks", "2", "--launch", "no-such-launcher-xyz") == 1
    res = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert "could not start 'no-such-launcher-xyz'" in res["failed"][0]["reason"]


@pytest.mark.parametrize("args,message", [
    (["--ranks", "4,x"], "--ranks"),
    (["--ranks", "4", "lora.rank=8"], "lora.rank"),
    (["--ranks", "4", "lora.rnak=8"], "lora.rnak"),
    (["--ranks", "4", "train.max_steps=0"], "train.max_steps"),
    (["--ranks", "4", "--train-script", "nope.py"], "nope.py"),
    (["--ranks", "4", "--seeds", "0"], "--seeds"),
    (["--ranks", "4", "--level", "95"], "--level"),
    (["--ranks", "4", "--grid-seeds", "a"], "--grid-seeds"),
    (["--ranks", "4", "--style-reference", "no/such/dir"], "--style-reference"),
])
def test_bad_input_names_the_option(tmp_path, capsys, args, message):
    assert main(["sweep", "--config", CONFIG, "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert "reelora sweep: error:" in err and message in err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    for opt in ("--ranks", "--alpha-mode", "--alpha", "--config", "--out", "--launch", "--train-script", "--timeout", "KEY=VALUE",
                "--seeds", "--level", "--tolerance", "--grid-prompt", "--grid-seeds", "--no-grid", "--style-reference"):
        assert opt in text
    assert "(default: 3)" in text and "(default: 0.95)" in text


def test_real_sweep_on_tiny_wan(tmp_path, tiny_data, capsys):
    rc = main(["sweep", "--config", CONFIG, "--ranks", "1,4", "--seeds", "1", "--out", str(tmp_path / "sw"),
               "--grid-prompt", "exp style, a red room", "--grid-seeds", "3", "--style-reference", str(tiny_data["heldout"]),
               f"data.shards={tiny_data['train']}", f"validation.shards={tiny_data['heldout']}", "train.max_steps=2",
               "train.checkpoint_every=0", "validation.prompts=[]", "validation.sample.steps=1", "log.progress_bar=false"])
    assert rc == 0, capsys.readouterr().out
    res = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    r1, r4 = res["runs"]
    for r in (r1, r4):
        assert r["status"] == "done" and r["steps"] == 2 and len(r["train_curve"]) == 2
        assert 0 < r["heldout_loss"] < 10 and set(r["heldout_quantiles"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
        assert Path(r["output_dir"], "adapter", "pytorch_lora_weights.safetensors").is_file()
        assert r["peak_mem_gb"] > 0
    assert r4["adapter_params"] == 4 * r1["adapter_params"] and r4["adapter_bytes"] > r1["adapter_bytes"]
    assert not res["heldout_is_training_data"]
    # the grid: base model first, then each rank, same prompt and seed; style distance per row
    g = res["grid"]
    assert [row["label"] for row in g["rows"]] == ["base", "rank 1", "rank 4"] and g["seeds"] == [3]
    assert all(row["error"] is None and row["style_distance"] > 0 for row in g["rows"])
    assert [Path(row["files"][0]).relative_to(tmp_path / "sw").as_posix() for row in g["rows"]] == [
        "grid/base/p0-seed3.mp4", "grid/rank-1/p0-seed3.mp4", "grid/rank-4/p0-seed3.mp4"]
    prov = json.loads(Path(g["rows"][2]["files"][0]).with_suffix(".json").read_text())
    assert prov["seed"] == 3 and prov["steps"] == 1 and "rank-4/seed-0/adapter" in prov["adapters"][0]["path"]
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "![sample grid](sample_grid.png)" in md and "| style distance |" in md and "| 4" in md
    assert (tmp_path / "sw" / "sample_grid.png").stat().st_size > 1000 and (tmp_path / "sw" / "sweep.png").is_file()


def test_timeout_stops_the_run_and_reports_it(tmp_path, capsys):
    slow = tmp_path / "slow_train.py"
    slow.write_text("import time\nprint('starting', flush=True)\ntime.sleep(60)\n")
    t0 = __import__("time").perf_counter()
    assert sweep(tmp_path, slow, "--ranks", "2", "--timeout", "1") == 1
    assert __import__("time").perf_counter() - t0 < 20
    res = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert res["failed"][0]["reason"].startswith("timed out after 1s")


def test_parse_ranks_smallest_within_and_alpha():
    assert sw.parse_ranks("4, 8,16") == [4, 8, 16]
    for bad in ("4,x", "0,4", "4,4", ""):
        with pytest.raises(ValueError, match="--ranks"):
            sw.parse_ranks(bad)
    assert sw.parse_seeds("0, 3") == [0, 3] and sw.training_seeds(5, 3) == [5, 6, 7]
    assert sw.alpha_for(8, "equal", 4.0) == 8.0 and sw.alpha_for(8, "fixed", 4.0) == 4.0


def test_summarize_run_takes_the_last_record_per_step(tmp_path):
    (tmp_path / "logs").mkdir()
    recs = [{"step": 1, "train/loss": 2.0, "train/step_time": 9.0}, {"step": 2, "train/loss": 1.5, "train/step_time": 0.2},
            {"step": 2, "val/loss": 1.4, "val/loss_q0.5": 1.4},
            # resumed after a crash: step 2 again, then 3
            {"step": 2, "train/loss": 1.6, "train/step_time": 0.4}, {"step": 3, "train/loss": 1.2, "train/step_time": 0.3},
            {"step": 3, "val/loss": 1.3, "val/loss_q0.5": 1.3}]
    (tmp_path / "logs" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{\"step\": 4, \"trai")
    s = sw.summarize_run(tmp_path)
    assert s["train_curve"] == [[1, 2.0], [2, 1.6], [3, 1.2]]
    assert s["heldout_loss"] == 1.3 and s["heldout_quantiles"] == {"0.5": 1.3}
    assert s["step_time_s"] == pytest.approx(0.35)  # median without the first step
    assert s["val_curve"] == [[2, 1.4], [3, 1.3]] and s["adapter_params"] is None


def test_sample_grid_loads_the_backbone_once_and_samples_like_a_sampler_per_row(tmp_path, monkeypatch):
    """Every row switches adapters on one Sampler: one backbone load for the grid, and each row's frames are,
    bit for bit, those of a Sampler built with that row's adapter alone (the base row: with none)."""
    import reelora.models.registry as registry
    from reelora.models.sample import Sampler
    from tests.models.conftest import lora_state_dict, write_diffusers

    per_rank = []
    for rank in (1, 4):  # what a run leaves in OUT/rank-R/seed-S/adapter (random non-zero lora_B, no training)
        sd, cfg = lora_state_dict("tiny-wan", seed=rank, rank=rank, alpha=rank)
        folder = tmp_path / f"rank-{rank}" / "adapter"
        write_diffusers(folder / "pytorch_lora_weights.safetensors", sd, cfg)
        per_rank.append({"rank": rank, "adapter": str(folder)})
    per_rank.append({"rank": 8, "adapter": str(tmp_path / "missing")})  # a bad adapter fails its row only
    cfg = sw.load_checked_config(CONFIG, ["validation.sample.steps=2"])
    loads, cells = [], []
    real_load = registry.load_model
    monkeypatch.setattr(registry, "load_model", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    monkeypatch.setattr(sw, "plot_sample_grid", lambda rows, columns, path: cells.extend(rows))  # the frames drawn
    grid = sw.sample_grid(cfg, per_rank, ["exp style, a red room"], [3], tmp_path / "sw", None, log=lambda *a: None)
    assert len(loads) == 1
    assert [(row["label"], row["error"] is None) for row in grid["rows"]] == [
        ("base", True), ("rank 1", True), ("rank 4", True), ("rank 8", False)]
    assert "AdapterError" in grid["rows"][3]["error"] and cells[3][1] is None
    settings = dict(seed=3, **vars(cfg.validation.sample))
    for (label, [frames]), loras in zip(cells, ([], [(per_rank[0]["adapter"], 1.0)], [(per_rank[1]["adapter"], 1.0)])):
        alone = Sampler("tiny-wan", loras, progress=False).generate("exp style, a red room", **settings).frames
        assert np.array_equal(frames, alone), label
    assert not np.array_equal(cells[0][1][0], cells[2][1][0])  # the adapter changes the clip
