"""`reelora sample`: clips from prompts with LoRA adapters, as mp4 + provenance JSON + contact sheet."""
from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields

from reelora.dtypes import NAMES as DTYPE_NAMES
from reelora.models.settings import SampleSettings, bound_error

EPILOG_TEMPLATE = """\
outputs (in --out DIR):
  <name>.mp4          H.264 clip; the provenance JSON is also in its metadata (tag reelora_provenance)
                      and in its signed C2PA manifest (action c2pa.created, digitalSourceType
                      trainedAlgorithmicMedia, assertion org.reelora.provenance)
  <name>.json         provenance: prompt, negative prompt, seed, steps, guidance, size, frames, fps,
                      scheduler, base model, each adapter's path/scale/sha256/format and its own
                      lineage metadata, reelora version, time
  contact_sheet.png   one frame strip per clip
  <name> is `NNN-<prompt slug>` unless a JSONL line gives "name".

--prompts FILE:
  plain text: one prompt per line (blank lines and lines starting with # are skipped), or
  JSONL: one object per line, e.g.
    {"prompt": "a lighthouse at dusk", "seed": 7, "frames": 33, "size": "480x832", "name": "lighthouse"}
  keys: prompt (required), seed, name, {settings}, frames (for num_frames),
  size ("HxW" or [H, W], for height/width). Unset keys take the command-line values.

defaults:
  unset settings take the model family's defaults; a local directory or hub id gets its family's
  full-size ones, so pass --num-frames/--height/--width/--steps for small models.

adapters:
  only .safetensors files are loaded (pickle checkpoints are refused unopened). Accepted layouts:
  diffusers/reelora (transformer.*), ComfyUI (diffusion_model.*), musubi-tuner/sd-scripts (lora_unet_*).
  Keys, shapes and values (NaN/inf) are checked against the backbone before sampling.

exit status:
  0 clips written; 2 bad input (flags, prompts, adapters, signing certificate/key, --out), refused before
  the model loads where possible; 1 a clip came out NaN/inf (the adapters and the denoising step are
  named, nothing is written for it) or a write failed.

examples:
  reelora sample --model tiny-wan --prompt "a red fox in the snow" --steps 2 --out samples
  reelora sample --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --lora out/adapter:0.8 \\
      --lora comfy_style.safetensors:0.3 --prompts prompts.jsonl --fuse --out samples
"""


def bounded(name: str, kind: type):
    """An argparse `type` that parses `kind` and rejects values outside the setting's bounds (naming the flag)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        error = bound_error(name, value)
        if error:
            raise argparse.ArgumentTypeError(error)
        return value

    parse.__name__ = kind.__name__
    return parse


def family_defaults(name: str) -> str:
    """'wan 50, ltx 50; tiny-wan 4, tiny-ltx 4': what each registered family uses when a setting is unset."""
    from reelora.models.registry import FAMILIES

    real = ", ".join(f"{f} {getattr(s.sample_defaults, name):g}" for f, s in FAMILIES.items())
    tiny = ", ".join(f"tiny-{f} {getattr(s.tiny_sample_defaults, name):g}" for f, s in FAMILIES.items())
    return f"{real}; {tiny}"


def add_settings(p: argparse.ArgumentParser) -> None:
    """One flag per SampleSettings field; the help is the field's docstring plus each family's default."""
    from reelora.train.config import field_docs

    docs = field_docs(SampleSettings)
    hints = typing.get_type_hints(SampleSettings)
    for f in fields(SampleSettings):
        kind = next(t for t in typing.get_args(hints[f.name]) if t is not type(None))
        flag = "--" + f.name.replace("_", "-")
        if kind is str:
            p.add_argument(flag, metavar="TEXT", help=docs[f.name])
        else:
            p.add_argument(flag, type=bounded(f.name, kind), metavar=f.name.upper(),
                           help=f"{docs[f.name]} Default: {family_defaults(f.name)}.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="sample clips from prompts with LoRA adapters (mp4 + provenance JSON)",
        description="Load a backbone and zero or more LoRA adapters, sample a clip per prompt, and write "
        "each as an mp4 with a provenance sidecar. Same model, adapters, prompt, seed and settings give "
        "identical frames.",
        epilog=EPILOG_TEMPLATE.replace("{settings}", ", ".join(f.name for f in fields(SampleSettings))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="M",
                   help="backbone: tiny-wan, tiny-ltx, a local diffusers directory, or a hub id already in the local cache")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="LoRA adapter file (or a directory holding pytorch_lora_weights.safetensors) and its "
                   "scale (default 1.0); repeat to combine several; scale 0 gives exactly the base model's output")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="one prompt")
    src.add_argument("--prompts", metavar="FILE", help="prompts file: one per line, or JSONL with per-line overrides (see below)")
    p.add_argument("--seed", type=bounded("seed", int), default=0, metavar="N",
                   help="noise seed for every prompt unless a JSONL line sets its own (0 to 2**63-1; default 0)")
    add_settings(p)
    p.add_argument("--fuse", action="store_true",
                   help="merge the adapters into the weights before sampling: faster, same frames within float tolerance")
    p.add_argument("--out", default="samples", metavar="DIR", help="output directory (default: samples)")
    dev = p.add_argument_group("device and memory")
    dev.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    dev.add_argument("--dtype", choices=DTYPE_NAMES,
                     help="weights dtype for transformer and text encoder (default: bfloat16 on GPU, float32 on CPU; the Wan VAE stays float32)")
    dev.add_argument("--cpu-offload", action="store_true",
                     help="keep components on the CPU and move each to the GPU only while it runs (diffusers "
                     "enable_model_cpu_offload; for backbones that do not fit; ignored on CPU)")
    dev.add_argument("--vae-tiling", action="store_true", help="decode frames tile by tile (diffusers vae.enable_tiling) to cut peak memory at large sizes")
    dev.add_argument("--vae-slicing", action="store_true", help="decode batch items one at a time (diffusers vae.enable_slicing)")
    dev.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                     help="the same frames, bit for bit, in any process on this machine: one torch thread, oneDNN "
                     "off, deterministic algorithms (default; costs little for tiny models: on a busy 2-core box one thread "
                     "was faster than two). "
                     "--no-deterministic uses every thread: faster on an idle many-core CPU, last bits may differ")
    dev.add_argument("--model-seed", type=int, default=0, metavar="N",
                     help="seed that builds a built-in tiny-* backbone (must match the one the adapter was trained on; default 0)")
    cred = p.add_argument_group("content credentials (C2PA)")
    cred.add_argument("--sign-cert", metavar="PEM",
                      help="certificate chain (signer first, then its issuers) that signs each clip's C2PA manifest "
                      "(default: $REELORA_SIGN_CERT, else a local development certificate that no trust list knows)")
    cred.add_argument("--sign-key", metavar="PEM", help="the signing certificate's private key (default: $REELORA_SIGN_KEY)")
    p.add_argument("--no-contact-sheet", action="store_true", help="skip writing contact_sheet.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from reelora.models.adapters import AdapterError
    from reelora.models.sample import SampleError, check_out_dir, sample_clips

    settings = SampleSettings(**{f.name: getattr(args, f.name) for f in fields(SampleSettings)})
    try:
        check_out_dir(args.out, "--out")
        results = sample_clips(
            args.model, prompts=args.prompt, prompts_file=args.prompts, loras=args.lora, out=args.out,
            seed=args.seed, settings=settings, fuse=args.fuse,
            contact_sheet=not args.no_contact_sheet, device=args.device, dtype=args.dtype,
            cpu_offload=args.cpu_offload, vae_tiling=args.vae_tiling, vae_slicing=args.vae_slicing,
            progress=not args.quiet, model_seed=args.model_seed, deterministic=args.deterministic,
            sign_cert=args.sign_cert, sign_key=args.sign_key,
        )
    except (AdapterError, ValueError, FileNotFoundError) as exc:
        print(f"reelora sample: error: {exc}", file=sys.stderr)
        return 2
    except (SampleError, OSError) as exc:  # a NaN/inf clip, or a write that failed (its text names the file)
        print(f"reelora sample: error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(r.mp4)
    return 0
