"""Peak GPU memory and step time of configs/ltx2-lora.yaml at the released LTX-2 size, next to `reelora plan`'s estimate.

    python benchmarks/ltx2_memory.py --config configs/ltx2-lora.yaml --frames 121 --height 512 --width 768

As benchmarks/wan22_memory.py: random weights of the released shapes (LTX2VideoTransformer3DModel's and
LTX2TextConnectors' defaults, models/common.materialize, on the GPU in the config's dtype), nothing downloaded;
the config's LoRA attached by train/loop.py's `build_model_and_optimizer`; cache-shaped batches (random latents of
the clip's latent shape, random [1, 1024, 3840 x 49] Gemma hidden states with a full mask) through train/step.py's
`train_step`, which runs LTX2Spec.forward. Prints one JSON line: peak memory (max_memory_allocated over the timed
steps, GiB), median step time, the plan's total. --arch/--connectors (JSON) shrink the model for a CPU smoke run.
"""
from __future__ import annotations

import json

import torch


def main() -> None:
    from reelora.train.bench import memory_parser, time_train_steps

    ap = memory_parser(__doc__, steps=2)
    ap.add_argument("--arch", default="{}", help="JSON overrides of the transformer config (CPU smoke runs)")
    ap.add_argument("--connectors", default="{}", help="JSON overrides of the connectors config (CPU smoke runs)")
    ap.add_argument("--text-len", type=int, default=1024)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from accelerate import Accelerator, init_empty_weights
    from diffusers import LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    from reelora.models.common import materialize
    from reelora.models.registry import resolve_published
    from reelora.models.spec import Components
    from reelora.train import plan as P
    from reelora.train.config import load_config
    from reelora.train.loop import base_dtype, build_model_and_optimizer, with_family_defaults
    from reelora.train.step import StepContext

    cfg = load_config(args.config, ["data.cache=CACHE", "train.grad_accum=1", *args.overrides])
    spec, arch = resolve_published(cfg.model)
    cfg = with_family_defaults(cfg, spec)
    arch = {**arch, **json.loads(args.arch)}
    conn_cfg = json.loads(args.connectors)
    device, dtype = torch.device("cuda" if torch.cuda.is_available() else "cpu"), base_dtype(cfg)
    comps = Components(family=spec.family, source=f"{cfg.model} (architecture, random weights)")
    with init_empty_weights(include_buffers=False):
        t = LTX2VideoTransformer3DModel(**arch)
        conn = LTX2TextConnectors(**conn_cfg)
    comps.transformer = materialize(t, device=device, dtype=dtype, seed=0).eval()
    comps.extra["connectors"] = materialize(conn, device=device, dtype=dtype, seed=1).eval()
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    model, optimizer, scheduler, params = build_model_and_optimizer(cfg, spec, comps, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    parch = P._ltx2_arch(cfg.model, arch, None, args.text_len, (args.frames, args.height, args.width), conn_cfg)
    c, lf, lh, lw = P.latent_shape(parch, args.frames, args.height, args.width)
    g = torch.Generator().manual_seed(0)
    width = conn.config.caption_channels * conn.config.text_proj_in_factor
    text = {"prompt_embeds": torch.randn(1, args.text_len, width, generator=g).to(dtype),
            "prompt_attention_mask": torch.ones(1, args.text_len, dtype=torch.long)}
    batch = {"key": ["k0"], "caption": ["c"], "latents": torch.randn(1, c, lf, lh, lw, generator=g), "text": text}
    ctx = StepContext(cfg, accelerator, spec, comps, model, optimizer, scheduler, params,
                      empty_text={k: torch.zeros_like(v) if k == "prompt_embeds" else v for k, v in text.items()})
    cuda = device.type == "cuda"
    timed = time_train_steps(ctx, [batch], args.steps, device)  # one warm-up step (allocator, kernels) first
    plan = P.estimate(cfg, shape=(args.frames, args.height, args.width), arch=parch)
    print(json.dumps({
        "config": args.config, "overrides": args.overrides, "arch": json.loads(args.arch), "model": cfg.model,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "shape": [args.frames, args.height, args.width],
        "latents": [c, lf, lh, lw], "tokens": plan.tokens,
        "peak_gib": round(timed["peak_bytes"] / 2**30, 2) if cuda else None,
        "step_s": round(timed["step_s"], 3), "plan_total_gib": round(plan.total_gib[plan.configured], 2),
        "plan": {"rows": {k: round(v, 2) for k, v in plan.rows.items()},
                 "activations": {k: round(v, 2) for k, v in plan.activations[plan.configured].items()}},
        "loss": timed["metrics"]["loss"], "lora_params": sum(p.numel() for p in params),
        "connector_grads": sum(1 for p in comps.extra["connectors"].parameters() if p.grad is not None),
        "versions": {"torch": torch.__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
