"""Research tools: rank sweeps, data sufficiency (subcommands registered here)."""
import argparse

from reelora.research import sufficiency, sweep


def register(sub: argparse._SubParsersAction) -> None:
    """`reelora sweep`, `reelora sufficiency`."""
    sweep.register(sub)
    sufficiency.register(sub)
