"""Sampling time: base model vs unfused LoRA vs fused LoRA, measured in one run so the ratios compare.

    python benchmarks/bench_sample.py                       # tiny-wan, a random rank-16 adapter, CPU
    python benchmarks/bench_sample.py --model /models/Wan2.1-T2V-1.3B-Diffusers --lora out/adapter \\
        --frames 33 --height 480 --width 832 --steps 20 --device cuda

Times the denoising loop (output_type="latent": the adapter only touches the transformer) unless
--decode is given. Each variant gets one warm-up clip, then the variants take turns for --repeats
rounds and each reports its median: on a shared machine a load spike then hits all three alike,
so the ratios stay meaningful. --sequential builds and times one variant at a time instead, for
backbones too large to hold three copies in memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from reelora.models.sample import Sampler


def random_adapter(model: str, out_dir: Path, rank: int, seed: int = 0) -> Path:
    """A diffusers-format LoRA on the spec's default targets with random non-zero lora_B."""
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    from reelora.models.registry import load_model

    spec, comps = load_model(model, components=("transformer",))
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(spec.lora_targets))
    comps.transformer.add_adapter(cfg)
    g = torch.Generator().manual_seed(seed)
    for name, p in comps.transformer.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.01
    sd = {f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(comps.transformer).items()}
    path = out_dir / "bench_lora.safetensors"
    save_file(sd, str(path), metadata={"format": "pt"})
    return path


def clip_kwargs(sampler: Sampler, args: argparse.Namespace) -> dict:
    req = sampler.resolve(args.prompt, num_frames=args.frames, height=args.height, width=args.width, steps=args.steps)
    return dict(prompt=req.prompt, num_frames=req.num_frames, height=req.height, width=req.width,
                num_inference_steps=req.steps, guidance_scale=req.guidance,
                max_sequence_length=sampler.comps.extra["max_text_len"],
                output_type="np" if args.decode else "latent")


def time_clip(sampler: Sampler, kwargs: dict, seed: int) -> float:
    sync(sampler.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        sampler.pipe(generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    sync(sampler.device)
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-wan", help="backbone (default tiny-wan)")
    p.add_argument("--lora", help="adapter to time (default: a random adapter of --rank on the default targets)")
    p.add_argument("--rank", type=int, default=16, help="rank of the random adapter (default 16)")
    p.add_argument("--frames", type=int, help="frames per clip (default per model)")
    p.add_argument("--height", type=int, help="frame height (default per model)")
    p.add_argument("--width", type=int, help="frame width (default per model)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed clips per variant after one warm-up (default 3)")
    p.add_argument("--decode", action="store_true", help="include VAE decoding in the timing")
    p.add_argument("--device", help="torch device (default cuda when available)")
    p.add_argument("--dtype", help="float32 / bfloat16 / float16 (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--prompt", default="a lighthouse at dusk, studio style")
    p.add_argument("--sequential", action="store_true",
                   help="hold one backbone in memory at a time (less robust to load changes than taking turns)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        lora = args.lora or str(random_adapter(args.model, Path(tmp), args.rank))
        variants = {"base": ([], False), "unfused": ([lora], False), "fused": ([lora], True)}
        results: dict = {"model": args.model, "lora": args.lora or f"random rank {args.rank}", "steps": args.steps,
                         "decode": args.decode, "threads": torch.get_num_threads(), "variants": {}}

        def make(loras: list[str], fuse: bool) -> Sampler:
            return Sampler(args.model, loras, fuse=fuse, device=args.device, dtype=args.dtype, progress=False)

        times: dict[str, list[float]] = {name: [] for name in variants}
        if args.sequential:
            for name, (loras, fuse) in variants.items():
                sampler = make(loras, fuse)
                kwargs = clip_kwargs(sampler, args)
                time_clip(sampler, kwargs, 0)  # warm-up: kernels, allocator
                times[name] = [time_clip(sampler, kwargs, i) for i in range(args.repeats)]
                del sampler
        else:
            samplers = {name: make(loras, fuse) for name, (loras, fuse) in variants.items()}
            kwargs = clip_kwargs(samplers["base"], args)
            for sampler in samplers.values():
                time_clip(sampler, kwargs, 0)
            for i in range(args.repeats):
                for name, sampler in samplers.items():
                    times[name].append(time_clip(sampler, kwargs, i))
        results["device"] = str(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
        results["mode"] = "sequential" if args.sequential else "interleaved"
        for name, ts in times.items():
            results["variants"][name] = {"median_s": statistics.median(ts), "times_s": ts}

    base = results["variants"]["base"]["median_s"]
    print(f"{args.model} on {results['device']} ({results['threads']} threads), {args.steps} steps, "
          f"{'with' if args.decode else 'without'} VAE decode, adapter: {results['lora']}, {results['mode']}")
    for name, v in results["variants"].items():
        v["ratio_to_base"] = v["median_s"] / base
        print(f"  {name:<8} {v['median_s']:8.3f} s   x{v['ratio_to_base']:.2f} of base")
    u, f = results["variants"]["unfused"]["median_s"], results["variants"]["fused"]["median_s"]
    results["fused_speedup_over_unfused"] = u / f
    print(f"  fused is x{u / f:.2f} faster than unfused")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
