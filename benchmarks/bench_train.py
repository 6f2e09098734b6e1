"""Step time and peak memory of LoRA training with and without the latent/text cache.

    python benchmarks/bench_train.py --shards SHARDS [--model tiny-wan] [--steps 10] [key=value ...]

Builds the cache for SHARDS (reused if present), then runs train.py's loop twice (cached, on the fly) and
prints one JSON line per mode: median step time, samples/s and peak memory (CUDA allocated, else RSS of
this process, which only grows: read the CPU numbers as upper bounds for the second mode).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--model", default="tiny-wan")
    ap.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "tiny-wan.yaml"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cache", default=None, help="cache dir (default: a temp dir)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from reelora.train.cache import build_cache
    from reelora.train.config import load_config
    from reelora.train.loop import run

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cache = args.cache or str(work / "cache")
    build_cache(args.shards, args.model, cache, progress=False)
    for mode, cache_dir in (("cached", cache), ("on_the_fly", None)):
        out = work / mode
        cfg = load_config(args.config, [f"model={args.model}", f"data.shards={args.shards}", f"data.cache={cache_dir or 'null'}",
                                        f"train.output_dir={out}", f"train.max_steps={args.steps}", "train.checkpoint_every=0",
                                        "validation.every=0", "log.progress_bar=false", *args.overrides])
        assert run(cfg) == 0
        recs = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()][1:]  # skip warm-up
        print(json.dumps({"mode": mode, "model": args.model, "steps": len(recs),
                          "step_time_s": statistics.median(r["train/step_time"] for r in recs),
                          "samples_per_s": statistics.median(r["train/samples_per_s"] for r in recs),
                          "peak_mem_gb": max(r["train/peak_mem_gb"] for r in recs)}))


if __name__ == "__main__":
    main()
