"""`reelora cache`: precompute VAE latents and text embeddings for a shard directory.

Runs as one process, or under `accelerate launch -m reelora.cli cache ...` with each rank encoding every
world-th clip and caption into the same content-addressed cache. One build per cache folder: rank 0
holds `OUT/.reelora.lock` for all ranks (they write distinct, atomically renamed entries), and a second
build into the same folder is refused naming the holder.

Entries already present are verified and broken ones rebuilt (the `repaired` count): by default from
their headers and sizes (one small read per entry), with `--verify full` by loading and hashing each.
"""
from __future__ import annotations

import argparse
import json
import sys

from reelora.dtypes import NAMES as DTYPE_NAMES


def register(sub) -> None:
    register_cache(sub)
    register_plan(sub)


def register_cache(sub) -> None:
    p = sub.add_parser("cache", help="encode shards to a reusable latent/text cache",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="shard directory (with index.json)")
    p.add_argument("--model", required=True, help="backbone: tiny-wan, tiny-ltx, a diffusers directory or a hub id")
    p.add_argument("--out", required=True, help="cache directory (created; existing entries are reused)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES, help="stored tensor dtype")
    p.add_argument("--batch-size", type=int, default=1, help="clips per VAE call")
    p.add_argument("--verify", choices=("header", "full"), default="header",
                   help="how existing entries are checked before reuse: 'header' (safetensors header and file size; "
                   "~30 µs per entry) or 'full' (load each and compare its recorded sha256; reads the whole cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)


def handler(args) -> int:
    from accelerate import PartialState

    from reelora.train.loop import cpu_multiprocess

    state = PartialState(cpu=cpu_multiprocess())  # rank/world from `accelerate launch`; a single process otherwise
    try:
        return _build(args, state)
    finally:
        if state.num_processes > 1:
            from reelora.train.parallel import end_process_group

            end_process_group()


def _build(args, state) -> int:
    from safetensors import SafetensorError

    from reelora.data.shards import ShardError
    from reelora.lock import lock_on_main
    from reelora.train.cache import build_cache
    from reelora.train.batches import DataError

    lock, refused = lock_on_main(args.out, "cache build", state)  # one lock for all ranks
    if refused:
        print(f"reelora cache: error: --out: {refused}", file=sys.stderr)
        return 1
    try:
        stats = build_cache(args.shards, args.model, args.out, rank=state.process_index, world=state.num_processes,
                            dtype=args.dtype, device=state.device, batch_size=args.batch_size,
                            progress=not args.no_progress and state.is_local_main_process, verify=args.verify,
                            lock=False)
        state.wait_for_everyone()  # rank 0's lock covers every rank's writes
    except (DataError, ShardError, ValueError, OSError, SafetensorError) as exc:  # SafetensorError: a failed write
        print(f"reelora cache: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()
    if state.num_processes > 1:  # one summary line from rank 0 (ranks printing at once interleave their lines)
        from accelerate.utils import gather_object

        per_rank = gather_object([stats])
        if not state.is_main_process:
            return 0
        stats = {k: (v if k == "clips" else sum(r[k] for r in per_rank)) for k, v in per_rank[0].items()}
        stats["per_rank"] = per_rank
    print(json.dumps({"ranks": state.num_processes, **stats}))
    return 0


PLAN_DESCRIPTION = """Estimate per-GPU memory of a training config before any weight loads.

Counts the transformer's parameters exactly (the family's published config built on the meta device, the
config's LoRA attached as training does), and estimates per GPU: frozen base weights (train.mixed_precision's
dtype), LoRA weights + gradients + optimizer state, activations with and without gradient checkpointing at
the clip size (data.shards' largest clip when its index is readable, else the family's sampling size, Wan
81x480x832, LTX-2 121x512x768; --frames/--height/--width override each), for train.parallel over --gpus processes, plus a
fixed CUDA allowance. Prints a table and a fits / does-not-fit verdict per GPU (for --gpu-gb, or for 24, 48
and 80 GB cards). Wan families and LTX-2 (video-only LoRA, its audio stream frozen) are modelled. Training
prints the same plan at start. How each figure is computed: train/plan.py;
measured comparisons: BENCHMARKS.md.

  reelora plan --config configs/wan2.1-t2v-1.3b-lora.yaml --gpu-gb 24
  reelora plan --config configs/wan2.1-t2v-14b-lora.yaml --gpus 8 --gpu-gb 80 --frames 33
"""


def register_plan(sub) -> None:
    p = sub.add_parser("plan", help="estimate per-GPU training memory from a config (no weights loaded)",
                       description=PLAN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config YAML (as for train.py)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. lora.rank=16 train.batch_size=2")
    p.add_argument("--gpus", type=int, default=1, help="processes (one per GPU) the run launches (default 1)")
    p.add_argument("--gpu-gb", type=float, default=None, help="memory of one GPU in GB (GiB); default: verdicts for 24, 48, 80")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: data.shards' largest clip, else the family's)")
    p.add_argument("--height", type=int, default=None, help="clip height in pixels (default as --frames)")
    p.add_argument("--width", type=int, default=None, help="clip width in pixels (default as --frames)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (with 'fits' per card) instead of the table")
    p.set_defaults(func=plan_handler)


def plan_handler(args) -> int:
    from reelora.train.config import load_config
    from reelora.train.plan import architecture, estimate, format_plan, shards_shape, verdicts

    cfg = load_config(args.config, args.overrides)  # ConfigError (a ValueError) names the key; cli.main prints it
    arch = architecture(cfg.model)
    given = (args.frames, args.height, args.width)
    base = shards_shape(cfg.data.shards) or arch.default_shape
    shape = tuple(g if g is not None else b for g, b in zip(given, base))
    plan = estimate(cfg, gpus=args.gpus, shape=shape, arch=arch)
    if args.json:
        print(json.dumps({**plan.to_dict(), "fits": {f"{g:g}": ok for g, ok in verdicts(plan, args.gpu_gb)}}, indent=2))
    else:
        print(format_plan(plan, args.gpu_gb))
    return 0
