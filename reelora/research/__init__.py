"""Research tools: the tiny pretrained base, rank sweeps, data sufficiency (subcommands registered here)."""
import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Nothing registered yet; sibling modules add `base`, `sweep`, `sufficiency`."""
