"""Train a LoRA adapter: `accelerate launch train.py --config configs/tiny-wan.yaml [key=value ...]`.

`python train.py --help` lists every config option with its docstring (from reelora/train/config.py).
"""
import os
import sys

from reelora.train.config import ConfigError, parse_args


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)  # validated before any model or torch-heavy import
    except ConfigError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    if cfg.train.deterministic:
        # MKL picks alignment-dependent kernels unless told otherwise, and reads this when it loads (with
        # torch, imported below): without it the same run in two processes can differ in the last bits.
        os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
    from reelora.train.loop import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
