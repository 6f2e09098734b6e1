"""Research tools: the tiny pretrained base, rank sweeps, data sufficiency (subcommands registered here)."""
import argparse

from reelora.research import base, sufficiency, sweep


def register(sub: argparse._SubParsersAction) -> None:
    """`reelora base ...`, `reelora sweep`, `reelora sufficiency`."""
    base.register(sub)
    sweep.register(sub)
    sufficiency.register(sub)
