"""`reelora` command line: thin subcommands over reelora.data, reelora.models and reelora.train.

Each package owns its subcommands in a `cli.py` with `register(subparsers)`; this file only wires
them together, so adding a command never means editing three places.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from reelora import __version__

# Modules that contribute subcommands, in the order they appear in --help.
_COMMAND_MODULES = (
    "reelora.models.cli",  # models show, sample
    "reelora.data.cli",  # shards build/audit/takedown
    "reelora.train.cli",  # cache, plan
    "reelora.models.sample_cli",  # sample
    "reelora.demo.cli",  # base build
    "reelora.research",  # sweep, sufficiency
    "reelora.studio.cli",  # studio (the web page; gradio imported only when it runs)
    "reelora.models.lineage",  # lineage (shares per title / rights holder), lineage scan
)


_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelora",
        description="LoRA fine-tuning for open video diffusion models: licensed library -> shards -> "
        "cache -> adapter -> styled clips with provenance. Training itself runs as "
        "`accelerate launch train.py --config CFG`.",
    )
    parser.add_argument("--version", action="version", version=f"reelora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `reelora plan --config CFG --gpus 8 train.parallel=fsdp`: argparse takes a KEY=VALUE list only before the
    # options; after them it reports it as unrecognized. Commands with overrides take them anywhere.
    if extra and isinstance(getattr(args, "overrides", None), list) and all(_OVERRIDE.match(a) for a in extra):
        args.overrides.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        # `reelora shards` without a subcommand: print that group's help
        (getattr(args, "_group_parser", None) or parser).print_help()
        return 2
    try:
        rc = args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        # Bad input is the user's to fix: say what and where, without a traceback
        # (REELORA_DEBUG=1 shows it for bug reports).
        if os.environ.get("REELORA_DEBUG"):
            raise
        print(f"reelora {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
