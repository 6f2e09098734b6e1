"""Assembling a build: staged titles -> near-duplicates dropped -> shards, index.json and the audit.

Runs in one process in manifest order, so the shards never depend on which staging worker finished
first: `--workers 1` and `--workers 8` give bit-identical shards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelora.data.audit import totals, write_audit
from reelora.data.clips import DuplicateIndex
from reelora.data.config import BuildConfig
from reelora.data.manifest import Library, describe, rights_record
from reelora.data.shards import FORMAT, KEY, ShardError, begin_incoming, commit_incoming, write_index, write_shard
from reelora.data.stage import WORK, StagedTitle, title_dir
from reelora.files import json_bytes

__all__ = ["Assembled", "assemble"]


@dataclass
class Assembled:
    """What `assemble` wrote."""

    clips: int
    shards: int
    titles_used: int
    quarantined: list[dict] = field(default_factory=list)  # {title_id, path, reason} per quarantined title


def assemble(out: Path, library: Library, cfg: BuildConfig, staged: dict[str, StagedTitle],
             excluded: list[dict], previous: dict) -> Assembled:
    """Dedup staged clips across titles (manifest order), write shards, audit and (last) index.json.

    All of them go to OUT/.incoming/ first and are moved into place together (`commit_incoming`), so a
    failure while writing (disk full) leaves the previous set as it was.

    Args:
        staged: title id -> its staged result, for every title not excluded.
        excluded: {title_id, reason} of titles left out by rights or takedown.
        previous: the index.json this directory held before (its takedowns are kept).
    """
    dedup = DuplicateIndex(cfg.dedup_threshold)
    chosen: list[tuple[dict, Path]] = []
    audit_titles: dict[str, dict] = {}
    quarantine: list[dict] = []
    for ex in excluded:
        title = library.title(ex["title_id"])
        audit_titles[title.id] = {
            "status": "taken_down" if ex["reason"].startswith("taken down") else "excluded",
            "reason": ex["reason"], "clips": 0, "seconds_used": 0.0, **rights_record(title),
            "path": str(title.path),
        }
    for title in library.titles:
        if title.id not in staged:
            continue
        result = staged[title.id]
        entry: dict[str, Any] = {
            "status": result.status, "clips": 0, "seconds_used": 0.0, **rights_record(title),
            "path": str(title.path), "source_sha256": result.source_sha256,
            "decoder": (result.probe or {}).get("decoder"),
            "scenes": result.scenes, "seconds_decoded": result.seconds_decoded,
            "excluded": list(result.rejected), "warnings": list(result.warnings),
        }
        if result.status != "done":
            entry["reason"] = result.reason or "unknown"
            quarantine.append({"title_id": title.id, "path": str(title.path), "reason": entry["reason"]})
        for clip in result.clips:
            meta = clip.meta
            dup_of = dedup.check_and_add(meta["key"], np.frombuffer(bytes.fromhex(clip.signature), np.uint8))
            if dup_of is not None:
                entry["excluded"].append({"start_s": meta["start_s"], "end_s": meta["end_s"],
                                          "reason": f"near-duplicate of {dup_of}", "key": meta["key"]})
                continue
            if not (isinstance(meta.get("key"), str) and KEY.match(meta["key"])):
                raise ShardError(f"{out / WORK / title.id}: staged clip key {meta.get('key')!r} is not a sample key")
            chosen.append((meta, title_dir(out / WORK, title.id) / "clips"))
            entry["clips"] += 1
            entry["seconds_used"] = round(entry["seconds_used"] + meta["end_s"] - meta["start_s"], 6)
        entry["excluded"].sort(key=lambda r: (r["start_s"], r["end_s"], r["reason"]))
        if entry["status"] == "done":
            entry["status"] = "used" if entry["clips"] else "no clips"
        audit_titles[title.id] = entry
    audit_titles = {t.id: audit_titles[t.id] for t in library.titles if t.id in audit_titles}

    with begin_incoming(out) as incoming:
        return _write_set(out, incoming, library, cfg, chosen, audit_titles, quarantine, previous)


def _write_set(out: Path, incoming: Path, library: Library, cfg: BuildConfig, chosen: list[tuple[dict, Path]],
               audit_titles: dict, quarantine: list[dict], previous: dict) -> Assembled:
    shard_entries = _write_all_shards(incoming, chosen, cfg)
    fields = {
        "settings": cfg.output_settings(),
        "library": {"path": str(library.path), "sha256": library.sha256, "studio": library.studio,
                    "trigger": library.trigger},
        "takedowns": previous.get("takedowns", []),
    }
    audit = {
        "format": FORMAT,
        "library": fields["library"],
        "as_of": fields["settings"]["as_of"],
        "totals": totals(audit_titles),
        "titles": audit_titles,
        "quarantine": quarantine,
        "takedowns": fields["takedowns"],
        "titles_detail": {t.id: describe(t) for t in library.titles},
    }
    fields["audit_sha256"] = write_audit(incoming, audit, shard_entries)
    index = write_index(incoming, shard_entries, fields)
    commit_incoming(out, incoming, {s["name"] for s in previous.get("shards", [])})  # index.json last
    return Assembled(clips=index["num_samples"], shards=len(shard_entries),
                     titles_used=sum(1 for t in audit_titles.values() if t["status"] == "used"),
                     quarantined=quarantine)


def _write_all_shards(out: Path, chosen: list[tuple[dict, Path]], cfg: BuildConfig) -> list[dict]:
    """Group clips into shards of at most shard_max_clips / shard_max_mb, in order; write them."""
    groups: list[list[tuple[dict, Path]]] = [[]]
    size = 0
    limit = cfg.shard_max_mb * 1024 * 1024
    for meta, folder in chosen:
        clip_bytes = (folder / f"{meta['key']}.mp4").stat().st_size
        if groups[-1] and (len(groups[-1]) >= cfg.shard_max_clips or size + clip_bytes > limit):
            groups.append([])
            size = 0
        groups[-1].append((meta, folder))
        size += clip_bytes
    if not groups[-1]:
        groups.pop()
    entries = []
    for i, group in enumerate(groups):
        samples = []
        for meta, folder in group:
            sample = {"__key__": meta["key"], "mp4": (folder / f"{meta['key']}.mp4").read_bytes(),
                      "json": json_bytes(meta)}
            jpg = folder / f"{meta['key']}.jpg"
            if jpg.exists():
                sample["jpg"] = jpg.read_bytes()
            samples.append(sample)
        entries.append(write_shard(out / f"shard-{i:06d}.tar", samples))
    return entries
