"""Shard writing (webdataset TarWriter), index.json, the audit, and takedown.

Layout of a shard directory::

    OUT/shard-000000.tar ...   # per clip: KEY.mp4 (H.264), KEY.json (metadata), KEY.jpg (thumbnail)
    OUT/index.json             # shards + sha256 + sample counts, build settings, manifest hash, takedowns
    OUT/audit.json, audit.md   # per title: clips and seconds used, every exclusion and quarantine
    OUT/audit.html             # the same, self-contained, with clip thumbnails per title
    OUT/work/TITLE_ID/         # staged clips (resume cache for `shards build`)

Tar members carry a fixed mtime/owner, clips are ordered by manifest then time, so the same
inputs give byte-identical shards.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "index.json"
AUDIT = "audit.json"
AUDIT_MD = "audit.md"
AUDIT_HTML = "audit.html"
THUMBS_PER_TITLE = 8
FORMAT = "reelora-shards/1"
_MTIME = 0  # fixed tar member time: reproducible shards


class ShardError(RuntimeError):
    """A shard directory is missing, damaged or inconsistent; the message names the file."""


def read_index(directory: str | Path) -> dict:
    """Parse `DIRECTORY/index.json`.

    Raises:
        ShardError: missing or not a reelora shard index.
    """
    path = Path(directory) / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{path}: no shard index here (run `reelora shards build` first)") from None
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable shard index: {exc}") from exc
    if index.get("format") != FORMAT:
        raise ShardError(f"{path}: format {index.get('format')!r} is not {FORMAT!r}")
    return index


def read_audit(directory: str | Path) -> dict:
    path = Path(directory) / AUDIT
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable audit: {exc}") from exc


def shard_paths(directory: str | Path) -> list[Path]:
    """The shard tar paths listed in the index, in order."""
    directory = Path(directory)
    return [directory / s["name"] for s in read_index(directory)["shards"]]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- assembling a build


def assemble(out: Path, library, cfg, results: dict[str, dict], summary, previous: dict) -> None:
    """Dedup staged clips across titles (manifest order), write shards, index and audit."""
    from reelora.data.build import WORK
    from reelora.data.clips import DuplicateIndex
    from reelora.data.manifest import describe, rights_record

    dedup = DuplicateIndex(cfg.dedup_threshold)
    chosen: list[tuple[dict, Path]] = []
    audit_titles: dict[str, dict] = {}
    quarantine: list[dict] = []
    for ex in summary.excluded_titles:
        title = library.title(ex["title_id"])
        audit_titles[title.id] = {
            "status": "taken_down" if ex["reason"].startswith("taken down") else "excluded",
            "reason": ex["reason"], "clips": 0, "seconds_used": 0.0, **rights_record(title),
            "path": str(title.path),
        }
    for title in library.titles:
        if title.id not in results:
            continue
        result = results[title.id]
        entry: dict[str, Any] = {
            "status": result["status"], "clips": 0, "seconds_used": 0.0, **rights_record(title),
            "path": str(title.path), "source_sha256": result.get("source_sha256"),
            "decoder": (result.get("probe") or {}).get("decoder"),
            "scenes": result.get("scenes"), "seconds_decoded": result.get("seconds_decoded"),
            "excluded": list(result.get("rejected", [])), "warnings": list(result.get("warnings", [])),
        }
        if result["status"] != "done":
            entry["reason"] = result.get("reason", "unknown")
            quarantine.append({"title_id": title.id, "path": str(title.path), "reason": entry["reason"]})
        for clip in result["clips"]:
            meta = clip["meta"]
            dup_of = dedup.check_and_add(meta["key"], np.frombuffer(bytes.fromhex(clip["signature"]), np.uint8))
            if dup_of is not None:
                entry["excluded"].append({"start_s": meta["start_s"], "end_s": meta["end_s"],
                                          "reason": f"near-duplicate of {dup_of}", "key": meta["key"]})
                continue
            chosen.append((meta, out / WORK / title.id / "clips"))
            entry["clips"] += 1
            entry["seconds_used"] = round(entry["seconds_used"] + meta["end_s"] - meta["start_s"], 6)
        entry["excluded"].sort(key=lambda r: (r["start_s"], r["end_s"], r["reason"]))
        if entry["status"] == "done":
            entry["status"] = "used" if entry["clips"] else "no clips"
        audit_titles[title.id] = entry
    audit_titles = {t.id: audit_titles[t.id] for t in library.titles if t.id in audit_titles}

    shard_entries = _write_all_shards(out, chosen, cfg)
    index = {
        "format": FORMAT,
        "shards": shard_entries,
        "num_samples": sum(s["num_samples"] for s in shard_entries),
        "settings": cfg.output_settings(),
        "library": {"path": str(library.path), "sha256": library.sha256, "studio": library.studio,
                    "trigger": library.trigger},
        "takedowns": previous.get("takedowns", []),
    }
    audit = {
        "format": FORMAT,
        "library": index["library"],
        "as_of": index["settings"]["as_of"],
        "totals": _totals(audit_titles),
        "titles": audit_titles,
        "quarantine": quarantine,
        "takedowns": index["takedowns"],
        "titles_detail": {t.id: describe(t) for t in library.titles},
    }
    _write_audit(out, audit, shard_entries)
    _write_json(out / INDEX, index)  # last: its presence means the set is complete
    summary.clips = index["num_samples"]
    summary.shards = len(shard_entries)
    summary.titles_used = sum(1 for t in audit_titles.values() if t["status"] == "used")
    summary.quarantined = quarantine


def _write_all_shards(out: Path, chosen: list[tuple[dict, Path]], cfg) -> list[dict]:
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
    for stale in out.glob("shard-*.tar"):
        stale.unlink()
    entries = []
    for i, group in enumerate(groups):
        name = f"shard-{i:06d}.tar"
        samples = []
        for meta, folder in group:
            sample = {"__key__": meta["key"], "mp4": (folder / f"{meta['key']}.mp4").read_bytes(),
                      "json": _json_bytes(meta)}
            jpg = folder / f"{meta['key']}.jpg"
            if jpg.exists():
                sample["jpg"] = jpg.read_bytes()
            samples.append(sample)
        entries.append(write_shard(out / name, samples))
    return entries


def write_shard(path: Path, samples: list[dict]) -> dict:
    """Write samples with webdataset's TarWriter (atomically); return the index entry."""
    import webdataset as wds

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        with wds.TarWriter(f, encoder=False, mtime=_MTIME) as writer:
            for sample in samples:
                writer.write(sample)
    os.replace(tmp, path)
    titles: dict[str, int] = {}
    shapes = []
    for s in samples:
        meta = json.loads(s["json"])
        titles[meta["title_id"]] = titles.get(meta["title_id"], 0) + 1
        shapes.append([meta["num_frames"], meta["height"], meta["width"]])
    return {
        "name": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "num_samples": len(samples),
        "titles": titles,
        "keys": [s["__key__"] for s in samples],
        "shapes": shapes,  # [frames, height, width] per key: lets the loader batch by bucket
    }


def read_shard_samples(path: Path) -> list[dict]:
    """All samples of one shard as {"__key__", ext: bytes}, in tar order (plain tarfile: exact)."""
    samples: list[dict] = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(member).read()
    return samples


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _totals(titles: dict[str, dict]) -> dict:
    return {
        "titles": len(titles),
        "titles_used": sum(1 for t in titles.values() if t["status"] == "used"),
        "titles_excluded": sum(1 for t in titles.values() if t["status"] in ("excluded", "taken_down")),
        "titles_quarantined": sum(1 for t in titles.values() if t["status"] == "quarantined"),
        "clips": sum(t["clips"] for t in titles.values()),
        "seconds_used": round(sum(t["seconds_used"] for t in titles.values()), 6),
    }


def render_audit_md(audit: dict) -> str:
    """A human-readable audit: totals, a table per title, and every exclusion with its reason."""
    t = audit["totals"]
    lines = [
        f"# Training data audit: {audit['library']['studio']}",
        "",
        f"Library `{audit['library']['path']}` (sha256 `{audit['library']['sha256'][:16]}…`), "
        f"rights judged as of {audit['as_of']}.",
        "",
        f"**{t['clips']} clips, {t['seconds_used']:.1f} s** from {t['titles_used']} of {t['titles']} titles; "
        f"{t['titles_excluded']} excluded, {t['titles_quarantined']} quarantined.",
        "",
        "| title | status | clips | seconds | licence | holder | note |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for tid, e in audit["titles"].items():
        note = e.get("reason", "") or "; ".join(e.get("warnings", []))
        lines.append(f"| {tid} | {e['status']} | {e['clips']} | {e['seconds_used']:.2f} | "
                     f"{e.get('license') or '—'} | {e.get('rights_holder') or '—'} | {_md(note)} |")
    lines += ["", "## Excluded material", ""]
    for tid, e in audit["titles"].items():
        for r in e.get("excluded", []):
            lines.append(f"- `{tid}` {r['start_s']:.2f}–{r['end_s']:.2f} s: {_md(r['reason'])}")
    if audit["quarantine"]:
        lines += ["", "## Quarantined files", ""]
        lines += [f"- `{q['title_id']}` `{q['path']}`: {_md(q['reason'])}" for q in audit["quarantine"]]
    if audit.get("takedowns"):
        lines += ["", "## Takedowns", ""]
        lines += [f"- `{d['title_id']}` on {d['date']}: {d['clips_removed']} clips removed from "
                  f"{', '.join(d['shards_rewritten']) or 'no shards'}" + (f" ({_md(d['reason'])})" if d.get("reason") else "")
                  for d in audit["takedowns"]]
    return "\n".join(lines) + "\n"


def _write_audit(directory: Path, audit: dict, shard_entries: list[dict]) -> None:
    _write_json(directory / AUDIT, audit)
    (directory / AUDIT_MD).write_text(render_audit_md(audit), encoding="utf-8")
    thumbs = collect_thumbnails(directory, shard_entries)
    (directory / AUDIT_HTML).write_text(render_audit_html(audit, thumbs), encoding="utf-8")


def collect_thumbnails(directory: Path, shard_entries: list[dict], per_title: int = THUMBS_PER_TITLE) -> dict:
    """Up to `per_title` evenly spread (key, jpg bytes, meta) per title, read from the shards."""
    keys_by_title: dict[str, list[str]] = {}
    for s in shard_entries:
        for key in s.get("keys", []):
            keys_by_title.setdefault(key.rsplit("_", 1)[0], []).append(key)
    wanted = set()
    for keys in keys_by_title.values():
        step = max(1, len(keys) / per_title)
        wanted.update(keys[int(i * step)] for i in range(min(per_title, len(keys))))
    found: dict[str, list[tuple[str, bytes, dict]]] = {}
    for s in shard_entries:
        if not wanted.intersection(s.get("keys", [])):
            continue
        for x in read_shard_samples(directory / s["name"]):
            if x["__key__"] in wanted and "jpg" in x:
                meta = json.loads(x["json"])
                found.setdefault(meta["title_id"], []).append((x["__key__"], x["jpg"], meta))
    return found


def render_audit_html(audit: dict, thumbs: dict) -> str:
    """The audit as one self-contained HTML page, with thumbnails of the clips used per title."""
    import base64
    import html

    e = html.escape
    t = audit["totals"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Training data audit</title>",
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 6px}figure{display:inline-block;margin:4px;font-size:11px;max-width:180px}"
        "img{max-width:180px}.excluded{color:#a00}</style>",
        f"<h1>Training data audit: {e(audit['library']['studio'])}</h1>",
        f"<p>Library <code>{e(audit['library']['path'])}</code> (sha256 <code>{e(audit['library']['sha256'])}</code>), "
        f"rights judged as of {e(audit['as_of'])}.<br><b>{t['clips']} clips, {t['seconds_used']:.1f} s</b> from "
        f"{t['titles_used']} of {t['titles']} titles; {t['titles_excluded']} excluded, "
        f"{t['titles_quarantined']} quarantined.</p>",
        "<table><tr><th>title</th><th>status</th><th>clips</th><th>seconds</th><th>licence</th><th>holder</th>"
        "<th>note</th></tr>",
    ]
    for tid, entry in audit["titles"].items():
        note = entry.get("reason", "") or "; ".join(entry.get("warnings", []))
        parts.append(f"<tr><td>{e(tid)}</td><td>{e(entry['status'])}</td><td>{entry['clips']}</td>"
                     f"<td>{entry['seconds_used']:.2f}</td><td>{e(entry.get('license') or '—')}</td>"
                     f"<td>{e(entry.get('rights_holder') or '—')}</td><td>{e(note)}</td></tr>")
    parts.append("</table>")
    for tid, entry in audit["titles"].items():
        if not thumbs.get(tid) and not entry.get("excluded"):
            continue
        parts.append(f"<h2>{e(tid)}</h2>")
        for key, jpg, meta in thumbs.get(tid, []):
            src = "data:image/jpeg;base64," + base64.b64encode(jpg).decode("ascii")
            parts.append(f"<figure><img src='{src}' alt='{e(key)}'><figcaption>{meta['start_s']:.2f}–"
                         f"{meta['end_s']:.2f} s: {e(meta['caption'])}</figcaption></figure>")
        if entry.get("excluded"):
            parts.append("<ul class='excluded'>" + "".join(
                f"<li>{r['start_s']:.2f}–{r['end_s']:.2f} s: {e(r['reason'])}</li>" for r in entry["excluded"]) + "</ul>")
    if audit["quarantine"]:
        parts.append("<h2>Quarantined files</h2><ul>" + "".join(
            f"<li><code>{e(q['title_id'])}</code> <code>{e(q['path'])}</code>: {e(q['reason'])}</li>"
            for q in audit["quarantine"]) + "</ul>")
    if audit.get("takedowns"):
        parts.append("<h2>Takedowns</h2><ul>" + "".join(
            f"<li><code>{e(d['title_id'])}</code> on {e(d['date'])}: {d['clips_removed']} clips removed "
            f"{e(d.get('reason') or '')}</li>" for d in audit["takedowns"]) + "</ul>")
    return "\n".join(parts) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- takedown


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
    index["shards"] = new_entries
    index["num_samples"] = sum(s["num_samples"] for s in new_entries)
    index["takedowns"] = [*index.get("takedowns", []), record]

    audit_path = directory / AUDIT
    if audit_path.exists():
        audit = read_audit(directory)
        entry = audit["titles"].get(title_id, {})
        entry.update(status="taken_down", reason=f"taken down on {record['date']}" + (f": {reason}" if reason else ""),
                     clips=0, seconds_used=0.0)
        audit["titles"][title_id] = entry
        audit["takedowns"] = index["takedowns"]
        audit["totals"] = _totals(audit["titles"])
        _write_audit(directory, audit, new_entries)
    from reelora.data.build import WORK

    shutil.rmtree(directory / WORK / title_id, ignore_errors=True)
    _write_json(directory / INDEX, index)
    return record


def verify(directory: str | Path) -> list[str]:
    """Check every shard against the index (existence, sha256, sample count); return problems."""
    directory = Path(directory)
    problems = []
    for s in read_index(directory)["shards"]:
        path = directory / s["name"]
        if not path.exists():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != s["sha256"]:
            problems.append(f"{path}: sha256 differs from {INDEX}")
    return problems


__all__ = ["read_index", "read_audit", "takedown", "verify", "write_shard", "read_shard_samples",
           "ShardError"]
