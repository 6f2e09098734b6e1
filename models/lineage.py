"""Who gets paid, and what a takedown must reach: an adapter's training footage per title and per rights holder.

Training records `shares` in every adapter's lineage (train/loop.py `export_adapter`, safetensors header key
`reelora.shares`): for each title and each rights holder, the clips and seconds of footage in the training set
and their share of all seconds (the basis for paying participants). `reelora lineage ADAPTER` prints them;
`reelora lineage scan DIR --title ID` finds every adapter, checkpoint and latent cache under DIR made from a
title (what a takedown of the shards must also reach; `reelora shards takedown --runs DIR` prints the same).

The shares describe the training set (every clip the run drew batches from), not how often each clip was drawn.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["UNRECORDED", "shares_of", "adapter_shares", "render_shares", "Use", "scan", "render_uses", "register"]

UNRECORDED = "(unrecorded)"
"""The rights holder of clips whose metadata names none (hand-made shards, titles without rights)."""

_CLIP_KEY = re.compile(r"^(?P<title>.+)_\d{7}$")  # data/stage.py: KEY = f"{title_id}_{first frame:07d}"


def shares_of(metas: Iterable[dict]) -> dict:
    """Clips, seconds and share of all seconds per title and per rights holder, from clip metadata (KEY.json).

    A clip lasts num_frames / fps seconds. Shares are fractions of the total seconds, rounded to 6 places.

    Returns:
        {"basis": "seconds", "clips": N, "seconds": S,
         "titles": {title_id: {"clips", "seconds", "share", "rights_holder"}},
         "holders": {holder: {"clips", "seconds", "share", "titles": [title_id, ...]}}}
    """
    titles: dict[str, dict] = {}
    for m in metas:
        title = str(m.get("title_id", UNRECORDED))
        t = titles.setdefault(title, {"clips": 0, "seconds": 0.0, "holders": set()})
        t["clips"] += 1
        t["seconds"] += float(m["num_frames"]) / float(m["fps"])
        t["holders"].add(str(m.get("rights_holder") or UNRECORDED))
    total = sum(t["seconds"] for t in titles.values())

    def share(seconds: float) -> float:
        return round(seconds / total, 6) if total else 0.0

    out_titles, holders = {}, {}
    for title, t in sorted(titles.items()):
        holder = " / ".join(sorted(t["holders"]))  # one per title from library.yaml; joined should shards disagree
        out_titles[title] = {"clips": t["clips"], "seconds": round(t["seconds"], 4), "share": share(t["seconds"]),
                             "rights_holder": holder}
        h = holders.setdefault(holder, {"clips": 0, "seconds": 0.0, "titles": []})
        h["clips"] += t["clips"]
        h["seconds"] += t["seconds"]
        h["titles"].append(title)
    for h in holders.values():
        h["share"] = share(h["seconds"])
        h["seconds"] = round(h["seconds"], 4)
    return {"basis": "seconds", "clips": sum(t["clips"] for t in titles.values()), "seconds": round(total, 4),
            "titles": out_titles, "holders": dict(sorted(holders.items()))}


def adapter_shares(path: str | Path) -> tuple[dict, str]:
    """The shares of an adapter file (or adapter folder): from its lineage, else from the shards it names.

    Adapters trained before shares were recorded name their shard folder and its index.json sha256: when that
    index is still the same file, the shares are computed from it.

    Returns:
        (shares as `shares_of` returns them, where they came from)
    Raises:
        ValueError: not an adapter file, or neither shares nor the same shards to compute them from.
    """
    from reelora.models.adapters import resolve_adapter_path
    from reelora.models.lora import read_lineage

    p = resolve_adapter_path(path)
    try:
        lineage = read_lineage(p)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(f"adapter {p}: cannot read its safetensors header ({exc})") from None
    if isinstance(lineage.get("shares"), dict):
        return lineage["shares"], f"lineage of {p}"
    shards, digest = lineage.get("shards"), lineage.get("shards_index_sha256")
    if not shards or not digest:
        raise ValueError(f"adapter {p}: its lineage records no shares and no training shards (not trained by reelora?)")
    from reelora.data.shards import INDEX, ShardError, ShardSet
    from reelora.files import sha256_file

    try:
        same = sha256_file(Path(shards) / INDEX) == digest
    except OSError:
        same = False
    if not same:
        raise ValueError(f"adapter {p}: its lineage records no shares, and {Path(shards) / INDEX} is gone or changed "
                         "since training (titles trained on: " + ", ".join(map(str, lineage.get("titles") or [])) + ")")
    try:
        clips = ShardSet(shards, what=f"training shards of {p}").clips
    except ShardError as exc:
        raise ValueError(str(exc)) from None
    return shares_of(c.meta for c in clips), f"{shards} (index.json sha256 as recorded at training)"


def render_shares(shares: dict, source: str = "") -> str:
    """A readable table of `shares`: per rights holder, then per title."""
    lines = [f"training footage: {shares['clips']} clips, {shares['seconds']:.2f} s"
             + (f" (from {source})" if source else ""), "", f"{'rights holder':<32} {'clips':>7} {'seconds':>10} {'share':>8}"]
    for holder, h in shares["holders"].items():
        lines.append(f"{holder:<32} {h['clips']:>7} {h['seconds']:>10.2f} {100 * h['share']:>7.2f}%")
    lines += ["", f"{'title':<32} {'clips':>7} {'seconds':>10} {'share':>8}  rights holder"]
    for title, t in shares["titles"].items():
        lines.append(f"{title:<32} {t['clips']:>7} {t['seconds']:>10.2f} {100 * t['share']:>7.2f}%  {t['rights_holder']}")
    return "\n".join(lines) + "\n"


@dataclass
class Use:
    """One thing under a scanned folder that was made from a title."""

    kind: str  # "adapter", "checkpoint" or "cache"
    path: str
    clips: int | None  # the title's clips in it (None where unknown)
    detail: str


def scan(directory: str | Path, title_id: str) -> list[Use]:
    """Every adapter, training checkpoint and latent cache under `directory` made from `title_id`, path order.

    Adapters: any `*.safetensors` whose lineage lists the title (its shares, or its titles). Checkpoints
    (`checkpoints/step-N/` of a run): those of a run whose adapter used the title, and those whose recorded
    `data.shards` still hold the title or record its takedown after the checkpoint was written. Caches: latent
    entries (`latents/**.safetensors`) whose recorded clip key belongs to the title.
    """
    from reelora.models.lora import read_lineage

    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"lineage scan: {root} is not a folder")
    uses: list[Use] = []
    cache_hits: dict[Path, int] = {}
    run_dirs: set[Path] = set()
    checkpoints: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        if here.name.startswith("step-") and "state.json" in files and here.parent.name == "checkpoints":
            checkpoints.append(here)
        cache_root = _cache_root(here)
        for name in sorted(files):
            if not name.endswith(".safetensors"):
                continue
            path = here / name
            if cache_root is not None:
                if _cache_entry_title(path) == title_id:
                    cache_hits[cache_root] = cache_hits.get(cache_root, 0) + 1
                continue
            try:
                lineage = read_lineage(path)
            except Exception:  # not ours, not an adapter, or damaged: nothing to say about the title
                continue
            shares = lineage.get("shares") if isinstance(lineage.get("shares"), dict) else None
            if shares and title_id in shares.get("titles", {}):
                t = shares["titles"][title_id]
                uses.append(Use("adapter", str(path), t["clips"], f"{t['seconds']:.2f} s, {100 * t['share']:.2f}% "
                                f"of its training footage (step {lineage.get('step', '?')})"))
            elif title_id in (lineage.get("titles") or []):
                uses.append(Use("adapter", str(path), None, f"lists the title in its lineage (step {lineage.get('step', '?')})"))
            else:
                continue
            if path.parent.name == "adapter":
                run_dirs.add(path.parent.parent)
    for ckpt in checkpoints:
        why = "its run's adapter used the title" if ckpt.parent.parent in run_dirs else _checkpoint_used(ckpt, title_id)
        if why:
            uses.append(Use("checkpoint", str(ckpt), None, why))
    for cache_root, n in cache_hits.items():
        uses.append(Use("cache", str(cache_root), n, f"{n} latent entries of the title's clips"))
    return sorted(uses, key=lambda u: u.path)


def _cache_root(folder: Path) -> Path | None:
    """The cache root (train/cache.py layout: latents/ab/*.safetensors, models/*.json) a latents folder is in."""
    if folder.parent.name == "latents" and (folder.parent.parent / "models").is_dir():
        return folder.parent.parent
    return None


def _cache_entry_title(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            key = (f.metadata() or {}).get("key", "")
    except Exception:
        return None
    m = _CLIP_KEY.match(key)
    return m.group("title") if m else None


def _checkpoint_used(ckpt: Path, title_id: str) -> str | None:
    """Why a checkpoint was trained on the title, judged from the shards its state.json names, or None."""
    from reelora.data.shards import read_index

    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        shards = state.get("config", {}).get("data.shards")
        index = read_index(Path(shards))
    except Exception:
        return None
    if any(title_id in s.get("titles", {}) for s in index.get("shards", [])):
        return f"trained on {shards}, which holds the title"
    written = (ckpt / "state.json").stat().st_mtime
    for t in index.get("takedowns", []):
        if t.get("title_id") == title_id and _iso_time(t.get("date")) >= written - 1:  # dates are to the second
            return f"trained on {shards} before the title was taken down from it ({t.get('date')})"
    return None


def _iso_time(text) -> float:
    import datetime as dt

    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return float("-inf")


def render_uses(uses: list[Use], directory, title_id: str) -> str:
    if not uses:
        return f"nothing under {directory} was made from title {title_id!r}\n"
    lines = [f"{len(uses)} things under {directory} were made from title {title_id!r} (retrain, delete or rebuild them):"]
    lines += [f"  {u.kind:<10} {u.path}: {u.detail}" for u in uses]
    return "\n".join(lines) + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `reelora lineage ADAPTER` and `reelora lineage scan DIR --title ID`."""
    p = sub.add_parser(
        "lineage", help="who an adapter's training footage came from; what was made from a title",
        description="`reelora lineage ADAPTER`: the clips, seconds and share of the training footage per rights "
        "holder and per title (the basis for paying them). `reelora lineage scan DIR --title ID`: every adapter, "
        "checkpoint and latent cache under DIR made from the title (what a takedown must also reach).",
    )
    p.add_argument("target", metavar="ADAPTER | scan", help="an adapter file or folder; or `scan`")
    p.add_argument("dir", nargs="?", type=Path, help="with scan: the folder to search (runs, caches)")
    p.add_argument("--title", help="with scan: the title id to look for")
    p.add_argument("--json", action="store_true", help="print JSON instead of the readable table")
    p.set_defaults(func=_main, _lineage_parser=p)


def _main(args: argparse.Namespace) -> int:
    if args.target == "scan":
        if args.dir is None or not args.title:
            args._lineage_parser.error("scan needs a folder and --title ID")
        try:
            uses = scan(args.dir, args.title)
        except FileNotFoundError as exc:
            print(f"reelora lineage: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps([asdict(u) for u in uses], indent=1) if args.json else render_uses(uses, args.dir, args.title),
              end="" if not args.json else "\n")
        return 0
    if args.dir is not None or args.title:
        args._lineage_parser.error("DIR and --title go with scan only")
    try:
        shares, source = adapter_shares(args.target)
    except ValueError as exc:  # AdapterError included: the message names the file
        print(f"reelora lineage: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(shares, indent=1) if args.json else render_shares(shares, source), end="" if not args.json else "\n")
    return 0
