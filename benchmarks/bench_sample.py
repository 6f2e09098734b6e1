"""Sampling time: base model vs unfused LoRA vs fused LoRA, measured in one run so the ratios compare.

    python benchmarks/bench_sample.py                       # tiny-wan, a random rank-16 adapter, CPU
    python benchmarks/bench_sample.py --model /models/Wan2.1-T2V-1.3B-Diffusers --lora out/adapter \\
        --frames 33 --height 480 --width 832 --steps 20 --device cuda

Times the denoising loop (output_type="latent": the adapter only touches the transformer) unless
--decode is given. Each variant gets one warm-up clip and then --repeats timed clips; the median is
reported. The three samplers are built one after another so only one backbone is in memory at a time.
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


def time_variant(sampler: Sampler, args: argparse.Namespace) -> list[float]:
    req = sampler.resolve(args.prompt, num_frames=args.frames, height=args.height, width=args.width, steps=args.steps)
    kwargs = dict(prompt=req.prompt, num_frames=req.num_frames, height=req.height, width=req.width,
                  num_inference_steps=req.steps, guidance_scale=req.guidance,
                  max_sequence_length=sampler.comps.extra["max_text_len"],
                  output_type="np" if args.decode else "latent")
    times = []
    for i in range(args.repeats + 1):  # the first run warms up kernels and allocators
        sync(sampler.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            sampler.pipe(generator=torch.Generator("cpu").manual_seed(i), **kwargs)
        sync(sampler.device)
        if i:
            times.append(time.perf_counter() - t0)
    return times


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
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        lora = args.lora or str(random_adapter(args.model, Path(tmp), args.rank))
        variants = {"base": ([], False), "unfused": ([lora], False), "fused": ([lora], True)}
        results: dict = {"model": args.model, "lora": args.lora or f"random rank {args.rank}", "steps": args.steps,
                         "decode": args.decode, "threads": torch.get_num_threads(), "variants": {}}
        for name, (loras, fuse) in variants.items():
            sampler = Sampler(args.model, loras, fuse=fuse, device=args.device, dtype=args.dtype, progress=False)
            times = time_variant(sampler, args)
            results["device"] = str(sampler.device)
            results["variants"][name] = {"median_s": statistics.median(times), "times_s": times}
            del sampler

    base = results["variants"]["base"]["median_s"]
    print(f"{args.model} on {results['device']} ({results['threads']} threads), {args.steps} steps, "
          f"{'with' if args.decode else 'without'} VAE decode, adapter: {results['lora']}")
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
