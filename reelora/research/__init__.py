"""Research tools: the tiny pretrained base, rank sweeps, data sufficiency (subcommands registered here)."""
import argparse

from reelora.research import base


def register(sub: argparse._SubParsersAction) -> None:
    """`reelora base ...` (sweep and sufficiency register here as they land)."""
    base.register(sub)
