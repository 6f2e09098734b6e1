"""Metric logging: the JSONL file and the wandb path as a user without a wandb key gets it (offline)."""
from __future__ import annotations

import json
import os
import re

from reelora.train.logs import new_run_id, wandb_mode
from tests.train.conftest import cfg_args, train_py


def test_run_ids_are_wandb_shaped_and_fresh():
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"[0-9a-z]{8}", i) for i in ids)


def test_wandb_mode_without_a_key_is_offline(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"


def test_wandb_project_logs_offline_and_a_resume_continues_the_same_run(tmp_path, shards, cache):
    # As a user without a wandb account runs it: no WANDB_MODE, no key, a HOME without .netrc.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path / "home")
    out = tmp_path / "run"
    args = cfg_args(out, shards, cache, "log.wandb_project=reelora-test", "train.checkpoint_every=1")
    first = _train(env, *args, "train.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (out / "logs" / "wandb_id").read_text()
    runs = sorted((out / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    assert list(runs[0].glob("run-*.wandb")), "wandb wrote no run file"
    second = _train(env, *args, "train.max_steps=3", "train.resume=latest")
    assert second.returncode == 0, second.stderr[-3000:]
    assert (out / "logs" / "wandb_id").read_text() == run_id
    assert all(r.name.endswith(run_id) for r in (out / "logs" / "wandb").glob("offline-run-*"))
    steps = [json.loads(l)["step"] for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def _train(env, *args):
    import subprocess
    import sys
    from pathlib import Path

    from tests.train.conftest import DETERMINISTIC_ENV

    root = Path(__file__).parents[2]
    return subprocess.run([sys.executable, str(root / "train.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**env, **DETERMINISTIC_ENV})
