"""Metric logging: the JSONL file and the wandb path as a user without a wandb key gets it (offline)."""
from __future__ import annotations

import json
import re

from reelora.train.logs import new_run_id, wandb_mode
from tests.train.conftest import cfg_args, train_py, user_env


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


def wandb_records(path):
    """The protobuf records of an offline `run-*.wandb` file (wandb's LevelDB-style log: 7-byte file header,
    32 KiB blocks, each record a 7-byte header (crc32, length, type) and a chunk; FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(path) -> list[dict]:
    rows = []
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def test_wandb_project_logs_offline_and_a_resume_continues_the_same_run(tmp_path, shards, cache):
    # As a user without a wandb account runs it: no WANDB_MODE, no key, a HOME without .netrc.
    env = {k: v for k, v in user_env().items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path / "home")
    out = tmp_path / "run"
    args = cfg_args(out, shards, cache, "log.wandb_project=reelora-test", "train.checkpoint_every=1")
    first = train_py(*args, "train.max_steps=2", "validation.every=2", env=env, pinned=False)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (out / "logs" / "wandb_id").read_text()
    runs = sorted((out / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    assert f"wandb sync {runs[0]}" in first.stdout + first.stderr  # what to run to upload it later
    # Read the offline run back: the metrics, the config and the validation video are all there.
    [run_file] = runs[0].glob("run-*.wandb")
    history = wandb_history(run_file)
    jsonl = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    train_rows = {m["step"]: m["train/loss"] for m in jsonl if "train/loss" in m}
    assert {h["_step"]: h["train/loss"] for h in history if "train/loss" in h} == train_rows == {
        1: train_rows[1], 2: train_rows[2]}
    assert any(h.get("val/videos/_type") == "videos" and h.get("val/videos/count") == 1 for h in history)
    assert any(h.get("val/loss") is not None for h in history)
    assert list((runs[0] / "files" / "media" / "videos").rglob("*.mp4"))
    run_records = [r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"]
    config = {u.key: json.loads(u.value_json) for u in run_records[0].config.update}
    assert config["model"] == "tiny-wan" and config["train"]["max_steps"] == 2 and run_records[0].run_id == run_id
    second = train_py(*args, "train.max_steps=3", "train.resume=latest", env=env, pinned=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (out / "logs" / "wandb_id").read_text() == run_id
    assert all(r.name.endswith(run_id) for r in (out / "logs" / "wandb").glob("offline-run-*"))
    records = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]

