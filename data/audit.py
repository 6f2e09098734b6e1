"""The audit of a shard build: what went in and what was left out, per title, with the reasons.

Every window left out is listed (`excluded`) with its reason; a clip dropped by a quality filter also
carries its scores (motion, sharpness, luma, clipped, black: clips.quality_scores), like Cosmos-Curate's
`filtered_windows`, so a threshold can be judged against what it removed.

Written next to the shards by `assemble` and rewritten by `takedown`::

    OUT/audit.json, audit.md   # per title: clips and seconds used, every exclusion and quarantine
    OUT/audit.html             # the same, self-contained, with clip thumbnails per title

index.json records the sha256 of each (`audit_sha256`), so `reelora shards verify` can tell an audit that
belongs to the shards from one a failed write left behind.
"""
from __future__ import annotations

import json
from pathlib import Path

from reelora.data.shards import ShardError, inside, read_json_bounded, read_shard_samples
from reelora.files import sha256_file, write_json_atomic, write_text_atomic

AUDIT = "audit.json"
AUDIT_MD = "audit.md"
AUDIT_HTML = "audit.html"
AUDIT_FILES = (AUDIT, AUDIT_MD, AUDIT_HTML)
THUMBS_PER_TITLE = 8

__all__ = ["AUDIT", "AUDIT_FILES", "read_audit", "write_audit", "totals", "render_audit_md", "render_audit_html"]


def read_audit(directory: str | Path) -> dict:
    """Parse DIRECTORY/audit.json (raises ShardError naming the file; refused unread over MAX_JSON_BYTES)."""
    path = Path(directory) / AUDIT
    try:
        audit = read_json_bounded(path, "audit")
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable audit: {exc}") from exc
    if not isinstance(audit, dict) or not isinstance(audit.get("titles"), dict):
        raise ShardError(f"{path}: not an audit (no 'titles' mapping)")
    return audit


def write_audit(directory: Path, audit: dict, shard_entries: list[dict], shard_dirs: tuple[Path, ...] = ()) -> dict:
    """audit.json, audit.md and audit.html (thumbnails read from the shards) into `directory`.

    Args:
        shard_dirs: folders to look for the shards in, in order (default: `directory`).
    Returns:
        {file name: sha256} of the three files, for index.json's `audit_sha256`.
    """
    write_json_atomic(directory / AUDIT, audit)
    write_text_atomic(directory / AUDIT_MD, render_audit_md(audit))
    thumbs = collect_thumbnails(shard_dirs or (directory,), shard_entries)
    write_text_atomic(directory / AUDIT_HTML, render_audit_html(audit, thumbs))
    return {name: sha256_file(directory / name) for name in AUDIT_FILES}


def totals(titles: dict[str, dict]) -> dict:
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
            lines.append(f"- `{tid}` {r['start_s']:.2f}–{r['end_s']:.2f} s: {_md(r['reason'])}{_md(scores_note(r))}")
    if audit["quarantine"]:
        lines += ["", "## Quarantined files", ""]
        lines += [f"- `{q['title_id']}` `{q['path']}`: {_md(q['reason'])}" for q in audit["quarantine"]]
    if audit.get("takedowns"):
        lines += ["", "## Takedowns", ""]
        lines += [f"- `{d['title_id']}` on {d['date']}: {d['clips_removed']} clips removed from "
                  f"{', '.join(d['shards_rewritten']) or 'no shards'}" + (f" ({_md(d['reason'])})" if d.get("reason") else "")
                  for d in audit["takedowns"]]
    return "\n".join(lines) + "\n"


def collect_thumbnails(shard_dirs: tuple[Path, ...], shard_entries: list[dict], per_title: int = THUMBS_PER_TITLE) -> dict:
    """Up to `per_title` evenly spread (key, jpg bytes, meta) per title, read from the shards (the first
    of `shard_dirs` that holds each)."""
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
        paths = [inside(d, s["name"], f"shard for the audit in {d}") for d in shard_dirs]
        path = next((p for p in paths if p.is_file()), paths[-1])
        for x in read_shard_samples(path):
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
                f"<li>{r['start_s']:.2f}–{r['end_s']:.2f} s: {e(r['reason'])}{e(scores_note(r))}</li>"
                for r in entry["excluded"]) + "</ul>")
    if audit["quarantine"]:
        parts.append("<h2>Quarantined files</h2><ul>" + "".join(
            f"<li><code>{e(q['title_id'])}</code> <code>{e(q['path'])}</code>: {e(q['reason'])}</li>"
            for q in audit["quarantine"]) + "</ul>")
    if audit.get("takedowns"):
        parts.append("<h2>Takedowns</h2><ul>" + "".join(
            f"<li><code>{e(d['title_id'])}</code> on {e(d['date'])}: {d['clips_removed']} clips removed "
            f"{e(d.get('reason') or '')}</li>" for d in audit["takedowns"]) + "</ul>")
    return "\n".join(parts) + "\n"


def scores_note(rejected: dict) -> str:
    """' (motion 0.12, sharpness 40.1, ...)' for a rejected window that was scored (clips.quality_scores), else ''."""
    scores = rejected.get("scores")
    if not isinstance(scores, dict) or not scores:
        return ""
    return " (" + ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}"
                            for k, v in scores.items()) + ")"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
