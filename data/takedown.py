"""Takedown (remove one title's clips from built shards, on the record) and verify (shards vs index)."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from reelora.data.audit import AUDIT, read_audit, totals, write_audit
from reelora.data.shards import (INDEX, ShardError, begin_incoming, check_title_id, commit_incoming, inside,
                                 read_index, read_shard_samples, write_index, write_shard)
from reelora.data.stage import WORK, title_dir
from reelora.files import sha256_file
from reelora.lock import RunLock

__all__ = ["takedown", "verify"]


def takedown(directory: str | Path, title_id: str, reason: str = "") -> dict:
    """Remove every clip of `title_id`: rewrite only the shards that held them, update the index
    and audit, delete the title's staged clips, and record the takedown (a later build skips it).

    Holds the directory's lock (`RunLock`, like a build), and writes like a build: new shards, audit and
    index go to DIR/.incoming/ and are moved into place together, index.json last.

    Returns:
        the takedown record.
    Raises:
        ShardError: not a title id, no index, a shard name outside the directory, or a shard's bytes no
            longer match the index (nothing is changed).
        LockError: another build or takedown is writing the directory.
    """
    directory = Path(directory)
    check_title_id(title_id, "--title")
    with RunLock(directory, "shard takedown"):
        return _takedown(directory, title_id, reason)


def _takedown(directory: Path, title_id: str, reason: str) -> dict:
    index = read_index(directory)
    where = f"{directory / INDEX}"
    affected = [s for s in index["shards"] if title_id in s.get("titles", {})]
    for s in affected:  # verify first: never rewrite on top of a damaged shard
        path = inside(directory, s["name"], where)
        if not path.is_file() or sha256_file(path) != s["sha256"]:
            raise ShardError(f"{path}: missing or its sha256 differs from {INDEX}; refusing to rewrite it")
    with begin_incoming(directory) as incoming:
        record = _rewrite(directory, incoming, index, affected, title_id, reason)
    shutil.rmtree(title_dir(directory / WORK, title_id), ignore_errors=True)
    return record


def _rewrite(directory: Path, incoming: Path, index: dict, affected: list[dict], title_id: str, reason: str) -> dict:
    where = f"{directory / INDEX}"
    removed = 0
    new_entries = []
    rewritten = []
    for s in index["shards"]:
        if s not in affected:
            new_entries.append(s)
            continue
        samples = read_shard_samples(inside(directory, s["name"], where))
        keep = [x for x in samples if json.loads(x["json"])["title_id"] != title_id]
        removed += len(samples) - len(keep)
        rewritten.append(s["name"])
        if keep:
            new_entries.append(write_shard(incoming / s["name"], keep))
    record = {
        "title_id": title_id,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reason": reason,
        "clips_removed": removed,
        "shards_rewritten": rewritten,
    }
    index["takedowns"] = [*index.get("takedowns", []), record]

    if (directory / AUDIT).exists():
        audit = read_audit(directory)
        entry = audit["titles"].get(title_id, {})
        entry.update(status="taken_down", reason=f"taken down on {record['date']}" + (f": {reason}" if reason else ""),
                     clips=0, seconds_used=0.0)
        audit["titles"][title_id] = entry
        audit["takedowns"] = index["takedowns"]
        audit["totals"] = totals(audit["titles"])
        index["audit_sha256"] = write_audit(incoming, audit, new_entries, (incoming, directory))
    write_index(incoming, new_entries, index)
    commit_incoming(directory, incoming, {s["name"] for s in affected})
    return record


def verify(directory: str | Path) -> list[str]:
    """Check every shard (existence, inside the directory, byte size, sha256) and the audit files
    (sha256, when the index records them) against index.json; return the problems found.

    Reads every byte of the set (sha256 at disk speed).
    """
    directory = Path(directory)
    index = read_index(directory)
    problems = []
    for s in index["shards"]:
        try:
            path = inside(directory, s["name"], f"{directory / INDEX}")
        except ShardError as exc:
            problems.append(str(exc))
            continue
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != s.get("sha256"):
            problems.append(f"{path}: sha256 differs from {INDEX}")
    for name, digest in sorted(index.get("audit_sha256", {}).items()):
        try:
            path = inside(directory, name, f"{directory / INDEX}: audit_sha256")
        except ShardError as exc:
            problems.append(str(exc))
            continue
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path}: sha256 differs from {INDEX} (written by another run?)")
    return problems
