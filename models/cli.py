"""`reelora models ...`: inspect backbones (family, components, parameter counts, LoRA targets)."""
from __future__ import annotations

import argparse
import json

from reelora.models.common import count_params


def describe(source: str) -> dict:
    """A JSON-able summary of a backbone: family, component classes, parameter counts, LoRA targets."""
    from reelora.models.registry import load_model

    spec, comps = load_model(source)
    info: dict = {"model": source, "family": spec.family, "pipeline": spec.pipeline_class_name,
                  "revision": comps.revision, "components": {}, "lora_targets": list(spec.lora_targets)}
    for name in ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer", "scheduler"):
        obj = getattr(comps, name)
        if obj is None:
            continue
        entry = {"class": type(obj).__name__}
        if hasattr(obj, "parameters"):
            entry["parameters"] = count_params(obj)
        info["components"][name] = entry
    for name, module in comps.modules().items():  # a family's other modules (LTX-2: connectors, audio VAE, vocoder)
        info["components"].setdefault(name, {"class": type(module).__name__, "parameters": count_params(module)})
    if comps.transformer is not None:
        # Which modules the default targets actually hit: a target matching nothing is a silent no-op.
        denoisers = [m for m in (comps.transformer, comps.transformer_2) if m is not None]  # Wan2.2-A14B: two experts
        # peft's suffix rule (a whole dotted part): LTX-2's `attn1.to_q` must not also hit `audio_attn1.to_q`
        hits = [n for d in denoisers for n, _ in d.named_modules() if any(n == t or n.endswith("." + t) for t in spec.lora_targets)]
        info["lora_target_modules"] = len(hits)
    return info


def _show(args: argparse.Namespace) -> int:
    info = describe(args.name)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']}  family={info['family']}  pipeline={info['pipeline']}  revision={info['revision']}")
    for name, entry in info["components"].items():
        params = f"{entry['parameters']:,} params" if "parameters" in entry else ""
        print(f"  {name:<13} {entry['class']:<34} {params}")
    print(f"  lora targets: {', '.join(info['lora_targets'])} ({info.get('lora_target_modules', 0)} modules)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="inspect backbones", description="Inspect video diffusion backbones.")
    models.set_defaults(_group_parser=models)
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    show = msub.add_parser(
        "show", help="family, components, parameter counts and default LoRA targets of a backbone",
        description="Load a backbone (a built-in tiny one: tiny-wan, tiny-wan22-5b, tiny-wan22-a14b, tiny-ltx, tiny-ltx2; a local "
        "diffusers directory, or a hub id "
        "already in the local cache) and print what it is made of.",
    )
    show.add_argument("name", help="tiny-wan, tiny-wan22-5b, tiny-wan22-a14b, tiny-ltx, tiny-ltx2, a diffusers directory, or a hub id")
    show.add_argument("--json", action="store_true", help="print JSON (keys: family, pipeline, components, lora_targets, ...)")
    show.set_defaults(func=_show)
