"""`reelora base build`: train (or reuse from the cache) the tiny pretrained Wan base the demo starts from."""
from __future__ import annotations

import argparse
import json


def _build(args: argparse.Namespace) -> int:
    from reelora.demo.pretrain import BaseSettings, build_base

    settings = BaseSettings(seed=args.seed, minutes=args.minutes, vae_max_steps=args.max_steps,
                            transformer_max_steps=args.max_steps)
    out, info = build_base(args.out, settings, use_cache=not args.no_cache,
                           log=lambda m: print(m, flush=True), threads=args.threads)
    print(json.dumps({"out": str(out), "key": info["key"], "vae_psnr_db": info["vae_psnr_db"],
                      "vae_steps": info["vae"]["steps"], "transformer_steps": info["transformer"]["steps"],
                      "heldout_loss": info["transformer"]["heldout_loss"], "build_seconds": info["build_seconds"]}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    base = sub.add_parser("base", help="the tiny pretrained base model (build/reuse)",
                          description="The embedded default backbone: a tiny Wan pipeline pretrained on a procedural corpus.")
    base.set_defaults(_group_parser=base)
    bsub = base.add_subparsers(dest="base_command", metavar="SUBCOMMAND")
    build = bsub.add_parser(
        "build", help="train the tiny Wan base from scratch on procedural video (cached by settings)",
        description="Train a tiny Wan-architecture pipeline (VAE, then transformer + text encoder) on procedural "
        "video (shapes, gradients, textures, pans, palettes, lighting) within a time box and save it in diffusers "
        "format. Builds are cached under $XDG_CACHE_HOME/reelora/base/<key> (default ~/.cache/reelora) keyed by "
        "the settings and the recipe's code; a later build with the same settings copies the cached one. "
        "The VAE's held-out reconstruction PSNR is stored in DIR/reelora_base.json.",
    )
    build.add_argument("--out", required=True, help="diffusers directory to write (replaced if it exists)")
    build.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget for the whole build (default 5)")
    build.add_argument("--seed", type=int, default=0, help="seeds weights, corpus and noise (default 0)")
    build.add_argument("--max-steps", type=int, default=None,
                       help="cap on VAE and on transformer steps (each), e.g. for quick tests; default: time box only")
    build.add_argument("--threads", type=int, default=None,
                       help="torch threads (default: all cores when the machine is idle, 1 when others are busy)")
    build.add_argument("--no-cache", action="store_true", help="always train; neither read nor write the cache")
    build.set_defaults(func=_build)
