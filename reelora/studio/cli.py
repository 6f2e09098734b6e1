"""`reelora studio`: serve the studio page locally (Gradio): prompts, adapters with strengths, compare, gallery."""
from __future__ import annotations

import argparse
import os
import sys

from reelora.dtypes import NAMES as DTYPE_NAMES

EPILOG = """\
what the page does:
  prompt(s) (one clip per line), negative prompt, seed (random each time unless locked), steps, frames,
  size and guidance; every adapter under --adapters with its lineage (trigger word, titles, rank) and a
  use box + strength slider (several at once); Generate; "Compare with base" renders the base model, each
  adapter alone and their mix with the same seed, side by side; a gallery of finished clips with their
  provenance, and the mp4 + JSON sidecar to download.

adapters (--adapters DIR, searched recursively):
  a folder holding pytorch_lora_weights.safetensors (a training run's adapter/) is one adapter; any other
  .safetensors file is one adapter (ComfyUI / musubi files too); checkpoints/ folders are skipped. A file
  that cannot be used (not safetensors, NaN, another backbone) is listed on the page with the reason.

clips:
  each clip is sampled by the same sampler as `reelora sample` and written to --out as <name>.mp4 +
  <name>.json (provenance); the same model, adapters, strengths, prompt, seed and settings give the same
  frames as `reelora sample`. Compare grids go to --out/compare/.

queue:
  one request runs on the model at a time; other users' requests wait in the queue (up to --max-queue).

examples:
  reelora studio --model tiny-wan --adapters runs/ --port 7860
  reelora studio --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --adapters /studio/adapters --host 0.0.0.0 --out /studio/clips

needs gradio: pip install 'reelora[studio]'
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "studio", help="a local web page for sampling styled clips with the studio's adapters (Gradio)",
        description="Serve a web page (Gradio) where creatives type prompts, pick adapters and their strengths, "
        "compare them with the base model on the same seed, and keep clips with their provenance.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="M",
                   help="backbone: tiny-wan, tiny-ltx, a local diffusers directory, or a hub id already in the local cache")
    p.add_argument("--adapters", required=True, metavar="DIR", help="folder searched for LoRA adapters (see below)")
    p.add_argument("--port", type=int, default=7860, metavar="P", help="port to serve on (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1, this machine only; 0.0.0.0 serves the local network)")
    p.add_argument("--out", default="studio-clips", metavar="DIR", help="where clips are written (default: studio-clips)")
    p.add_argument("--max-queue", type=int, default=32, metavar="N",
                   help="requests that may wait for the model at once; more are refused with a message (default 32)")
    dev = p.add_argument_group("device and memory (as for `reelora sample`)")
    dev.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    dev.add_argument("--dtype", choices=DTYPE_NAMES, help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    dev.add_argument("--cpu-offload", action="store_true", help="diffusers enable_model_cpu_offload (GPU only)")
    dev.add_argument("--vae-tiling", action="store_true", help="decode frames tile by tile to cut peak memory")
    dev.add_argument("--model-seed", type=int, default=0, metavar="N",
                     help="seed that builds a built-in tiny-* backbone (must match the one the adapters trained on; default 0)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from reelora.studio import require_gradio

    # Gradio's usage statistics and version check would call out to the internet on every start.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        require_gradio()
    except ImportError as exc:
        print(f"reelora studio: error: {exc}", file=sys.stderr)
        return 2
    from reelora.studio.app import serve
    from reelora.studio.engine import Studio

    studio = Studio(args.model, args.adapters, args.out, device=args.device, dtype=args.dtype,
                    cpu_offload=args.cpu_offload, vae_tiling=args.vae_tiling, model_seed=args.model_seed)
    offered = ", ".join(studio.adapters) or "none"
    print(f"reelora studio: {args.model} with adapters {offered}; clips go to {studio.out_dir}", flush=True)
    try:
        serve(studio, args.adapters, host=args.host, port=args.port, max_queue=args.max_queue)
    except OSError as exc:  # the port is taken, or the address cannot be bound
        print(f"reelora studio: error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
