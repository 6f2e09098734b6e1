"""Takedown (remove one title's clips from built shards, on the record) and verify (shards vs index)."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from reelora.data.audit import AUDIT, read_audit, totals, write_audit
from reelora.data.shards import INDEX, ShardError, read_index, read_shard_samples, write_index, write_shard
from reelora.data.stage import WORK
from reelora.files import sha256_file

__all__ = ["takedown", "verify"]


def takedown(directory: str | Path, title_id: str, reason: str = "") -> dict:
    """Remove every clip of `title_id`: rewrite only the shards that held them, update the index
    and audit, delete the title's staged clips, and record the takedown (a later build skips it).

    Returns:
        the takedown record.
    Raises:
        ShardError: no index, or a shard's bytes no longer match the index (nothing is changed).
    """
    directory = Path(directory)
    index = read_index(directory)
    affected = [s for s in index["shards"] if title_id in s.get("titles", {})]
    for s in affected:  # verify first: never rewrite on top of a damaged shard
        path = directory / s["name"]
        if not path.exists() or sha256_file(path) != s["sha256"]:
            raise ShardError(f"{path}: missing or its sha256 differs from {INDEX}; refusing to rewrite it")
    removed = 0
    new_entries = []
    rewritten = []
    for s in index["shards"]:
        if s not in affected:
            new_entries.append(s)
            continue
        path = directory / s["name"]
        samples = read_shard_samples(path)
        keep = [x for x in samples if json.loads(x["json"])["title_id"] != title_id]
        removed += len(samples) - len(keep)
        rewritten.append(s["name"])
        if keep:
            new_entries.append(write_shard(path, keep))
        else:
            path.unlink()
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
        write_audit(directory, audit, new_entries)
    shutil.rmtree(directory / WORK / title_id, ignore_errors=True)
    write_index(directory, new_entries, index)
    return record


def verify(directory: str | Path) -> list[str]:
    """Check every shard against the index (existence, sha256); return the problems found."""
    directory = Path(directory)
    problems = []
    for s in read_index(directory)["shards"]:
        path = directory / s["name"]
        if not path.exists():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != s["sha256"]:
            problems.append(f"{path}: sha256 differs from {INDEX}")
    return problems
