"""`reelora sample`: clips from prompts with LoRA adapters, as mp4 + provenance JSON + contact sheet."""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
outputs (in --out DIR):
  <name>.mp4          H.264 clip; the provenance JSON is also in its metadata (tag reelora_provenance)
  <name>.json         provenance: prompt, negative prompt, seed, steps, guidance, size, frames, fps,
                      scheduler, base model, each adapter's path/scale/sha256/format and its own
                      lineage metadata, reelora version, time
  contact_sheet.png   one frame strip per clip
  <name> is `NNN-<prompt slug>` unless a JSONL line gives "name".

--prompts FILE:
  plain text: one prompt per line (blank lines and lines starting with # are skipped), or
  JSONL: one object per line, e.g.
    {"prompt": "a lighthouse at dusk", "seed": 7, "frames": 33, "size": "480x832", "name": "lighthouse"}
  keys: prompt (required), negative_prompt, seed, frames (or num_frames), size ("HxW" or [H, W]) or
  height/width, steps, guidance, fps, name. Unset keys take the command-line values.

adapters:
  only .safetensors files are loaded (pickle checkpoints are refused unopened). Accepted layouts:
  diffusers/reelora (transformer.*), ComfyUI (diffusion_model.*), musubi-tuner/sd-scripts (lora_unet_*).
  Keys, shapes and values (NaN/inf) are checked against the backbone before sampling.

examples:
  reelora sample --model tiny-wan --prompt "a red fox in the snow" --steps 2 --out samples
  reelora sample --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --lora out/adapter:0.8 \\
      --lora comfy_style.safetensors:0.3 --prompts prompts.jsonl --fuse --out samples
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="sample clips from prompts with LoRA adapters (mp4 + provenance JSON)",
        description="Load a backbone and zero or more LoRA adapters, sample a clip per prompt, and write "
        "each as an mp4 with a provenance sidecar. Same model, adapters, prompt, seed and settings give "
        "identical frames.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="M",
                   help="backbone: tiny-wan, tiny-ltx, a local diffusers directory, or a hub id already in the local cache")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="LoRA adapter file (or a directory holding pytorch_lora_weights.safetensors) and its "
                   "scale (default 1.0); repeat to combine several; scale 0 gives exactly the base model's output")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="one prompt")
    src.add_argument("--prompts", metavar="FILE", help="prompts file: one per line, or JSONL with per-line overrides (see below)")
    p.add_argument("--negative-prompt", metavar="TEXT", help="what to steer away from (used when --guidance > 1)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="noise seed for every prompt unless a JSONL line sets its own (default 0)")
    p.add_argument("--num-frames", type=int, metavar="F",
                   help="frames per clip; F-1 must be a multiple of the VAE's temporal compression "
                   "(Wan: 4, LTX: 8, tiny-wan: 2, tiny-ltx: 4). Defaults: Wan 81, LTX 121, tiny-* 9. A local "
                   "directory gets its family's full-size defaults, so pass --num-frames/--height/--width/--steps "
                   "for small ones")
    p.add_argument("--height", type=int, metavar="H", help="frame height in pixels, a multiple of 16 for Wan, 32 for LTX (default Wan 480, LTX 480, tiny-* 32)")
    p.add_argument("--width", type=int, metavar="W", help="frame width in pixels, same rule as --height (default Wan 832, LTX 704, tiny-* 32)")
    p.add_argument("--steps", type=int, metavar="S", help="denoising steps (default 50; tiny models 4)")
    p.add_argument("--guidance", type=float, metavar="G", help="classifier-free guidance scale (default Wan 5.0, LTX 3.0)")
    p.add_argument("--fps", type=float, metavar="R", help="frame rate of the written mp4 (default Wan 16, LTX 24, tiny 8)")
    p.add_argument("--fuse", action="store_true",
                   help="merge the adapters into the weights before sampling: faster, same frames within float tolerance")
    p.add_argument("--out", default="samples", metavar="DIR", help="output directory (default: samples)")
    dev = p.add_argument_group("device and memory")
    dev.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    dev.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                     help="weights dtype for transformer and text encoder (default: bfloat16 on GPU, float32 on CPU; the Wan VAE stays float32)")
    dev.add_argument("--cpu-offload", action="store_true",
                     help="keep components on the CPU and move each to the GPU only while it runs (diffusers "
                     "enable_model_cpu_offload; for backbones that do not fit; ignored on CPU)")
    dev.add_argument("--vae-tiling", action="store_true", help="decode frames tile by tile (diffusers vae.enable_tiling) to cut peak memory at large sizes")
    dev.add_argument("--vae-slicing", action="store_true", help="decode batch items one at a time (diffusers vae.enable_slicing)")
    dev.add_argument("--model-seed", type=int, default=0, metavar="N",
                     help="seed that builds a built-in tiny-* backbone (must match the one the adapter was trained on; default 0)")
    p.add_argument("--no-contact-sheet", action="store_true", help="skip writing contact_sheet.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from reelora.models.adapters import AdapterError
    from reelora.models.sample import sample_clips

    try:
        results = sample_clips(
            args.model, prompts=args.prompt, prompts_file=args.prompts, loras=args.lora, out=args.out,
            negative_prompt=args.negative_prompt, seed=args.seed, num_frames=args.num_frames, height=args.height,
            width=args.width, steps=args.steps, guidance=args.guidance, fps=args.fps, fuse=args.fuse,
            contact_sheet=not args.no_contact_sheet, device=args.device, dtype=args.dtype,
            cpu_offload=args.cpu_offload, vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing,
            progress=not args.quiet, model_seed=args.model_seed,
        )
    except (AdapterError, ValueError, FileNotFoundError) as exc:
        print(f"reelora sample: error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(r.mp4)
    return 0
