"""Peak GPU memory and step time of the Wan2.2 configs at their published sizes, next to `reelora plan`'s estimate.

    python benchmarks/wan22_memory.py --config configs/wan2.2-ti2v-5b-lora.yaml --frames 121 --height 704 --width 1280
    python benchmarks/wan22_memory.py --config configs/wan2.2-t2v-a14b-lora.yaml --frames 33 --height 480 --width 832

Random weights of the published shapes (models/common.materialize, on the GPU in the config's dtype), nothing
downloaded; the config's own LoRA attached by train/loop.py's `build_model_and_optimizer` (both A14B experts held,
LoRA on each as lora.experts says); cache-shaped batches (random latents of the clip's latent shape, random
[1, 512, 4096] text embeddings) through train/step.py's `train_step`. Prints one JSON line: peak memory
(torch.cuda.max_memory_allocated over the timed steps, GiB), median step time, and the plan's total for the same
clip shape. train.grad_accum is set to 1 (the peak does not depend on it).
"""
from __future__ import annotations

import json

import torch


def main() -> None:
    from reelora.train.bench import memory_parser, time_train_steps

    ap = memory_parser(__doc__, steps=3)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. lora.experts=high")
    args = ap.parse_args()

    from accelerate import Accelerator, init_empty_weights
    from diffusers import WanTransformer3DModel

    from reelora.models.common import materialize
    from reelora.models.registry import resolve_published
    from reelora.models.spec import Components
    from reelora.train import plan as P
    from reelora.train.config import load_config
    from reelora.train.loop import base_dtype, build_model_and_optimizer, with_family_defaults
    from reelora.train.step import StepContext

    cfg = load_config(args.config, ["data.cache=CACHE", "train.grad_accum=1", *args.overrides])
    spec, arch = resolve_published(cfg.model)  # offline: the published architecture, not the hub's model_index.json
    cfg = with_family_defaults(cfg, spec)
    device, dtype = torch.device("cuda" if torch.cuda.is_available() else "cpu"), base_dtype(cfg)
    comps = Components(family=spec.family, source=f"{cfg.model} (architecture, random weights)")
    for i, name in enumerate(getattr(spec, "experts", None) or ("transformer",)):
        with init_empty_weights(include_buffers=False):
            t = WanTransformer3DModel(**arch)
        keep = tuple(t._keep_in_fp32_modules or ())
        setattr(comps, name, materialize(t, device=device, dtype=dtype, seed=i, keep_fp32=keep).eval())
    if getattr(spec, "experts", None):
        comps.extra["boundary_ratio"] = spec.boundary_ratio
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    model, optimizer, scheduler, params = build_model_and_optimizer(cfg, spec, comps, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    vae = spec.published_vae
    c, lf = vae["z_dim"], (args.frames - 1) // vae["scale_factor_temporal"] + 1
    lh, lw = args.height // vae["scale_factor_spatial"], args.width // vae["scale_factor_spatial"]
    g = torch.Generator().manual_seed(0)
    text = {"prompt_embeds": torch.randn(1, 512, 4096, generator=g).to(dtype)}
    batch = {"key": ["k0"], "caption": ["c"], "latents": torch.randn(1, c, lf, lh, lw, generator=g), "text": text}
    ctx = StepContext(cfg, accelerator, spec, comps, model, optimizer, scheduler, params,
                      empty_text={"prompt_embeds": torch.zeros_like(text["prompt_embeds"])})
    cuda = device.type == "cuda"
    timed = time_train_steps(ctx, [batch], args.steps, device)  # one warm-up step (allocator, kernels) first
    plan = P.estimate(cfg, shape=(args.frames, args.height, args.width))
    print(json.dumps({
        "config": args.config, "overrides": args.overrides, "model": cfg.model, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": [args.frames, args.height, args.width], "latents": [c, lf, lh, lw], "tokens": plan.tokens,
        "peak_gib": round(timed["peak_bytes"] / 2**30, 2) if cuda else None, "step_s": round(timed["step_s"], 3),
        "plan_total_gib": round(plan.total_gib[plan.configured], 2), "loss": timed["metrics"]["loss"],
        "lora_params": sum(p.numel() for p in params), "versions": {"torch": torch.__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
