"""Host memory of a cached training run with validation samples vs without (CPU).

    python benchmarks/validation_memory.py                  # tiny-wan, then tiny-wan with a larger text encoder
    python benchmarks/validation_memory.py --text-layers 24 --text-ffn 32768 --repeats 3

Each run is `train.py` in a child process (3 steps, validation at every step with 2 prompts, or none), and
reports the child's peak RSS and its RSS as each training step starts. tiny-wan's models weigh kilobytes,
so its figures show what validation's code and buffers cost; the second backbone is tiny-wan saved as a
local diffusers directory with a text encoder of --text-layers x --text-ffn (hundreds of MB), so a text
encoder held through training shows in the per-step RSS. Run from the repository root.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A child forked from this small launcher: its ru_maxrss is its own peak (a child spawned straight from a large
# parent would report the parent's high-water mark, which Linux carries into the child's ru_maxrss).
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""
# train.py with the RSS (MiB) written to argv[1] as each training step starts.
STEP_RSS = """
import os, runpy, sys
import reelora.train.loop as loop
record, train_step = open(sys.argv[1], "w"), loop.train_step
def recorded(ctx, batches, step):
    record.write(f"{step} {int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20:.1f}\\n")
    record.flush()
    return train_step(ctx, batches, step)
loop.train_step = recorded
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def measure(work: Path, name: str, args: list[str]) -> dict:
    """Peak RSS and per-step RSS (MiB) of one `train.py ARGS` child."""
    peak, steps = work / f"{name}.peak", work / f"{name}.steps"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", LAUNCHER, str(peak), "-c", STEP_RSS, str(steps), str(ROOT / "train.py"), *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    kib, code = map(int, peak.read_text().split())
    if code != 0:
        raise SystemExit(f"{name}: train.py exited {code}\n{r.stderr[-3000:]}")
    per_step = [float(line.split()[1]) for line in steps.read_text().splitlines()]
    return {"peak_mib": round(kib / 1024, 1), "step_rss_mib": per_step}


def big_text_model(out: Path, layers: int, ffn: int) -> tuple[Path, int]:
    """tiny-wan as a local diffusers directory whose text encoder has `layers` layers of width `ffn`."""
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    from reelora.models.common import TINY_TEXT, seeded
    from reelora.models.registry import load_model

    spec, comps = load_model("tiny-wan")
    with seeded(0):
        comps.text_encoder = UMT5EncoderModel(UMT5Config(**{**TINY_TEXT, "num_layers": layers, "d_ff": ffn})).eval()
    spec.pipeline(comps).save_pretrained(out)
    return out, sum(p.numel() * p.element_size() for p in comps.text_encoder.parameters()) // 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--text-layers", type=int, default=24)
    p.add_argument("--text-ffn", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.train.conftest import write_shards

    from reelora.train.cache import build_cache

    work = Path(args.work or tempfile.mkdtemp(prefix="valmem-"))
    shards = write_shards(work / "shards")
    model_dir, te_mib = big_text_model(work / "big-text-wan", args.text_layers, args.text_ffn)
    results = {"text_encoder_mib": te_mib}
    for model in ("tiny-wan", str(model_dir)):
        cache = work / f"cache-{Path(model).name}"
        build_cache(str(shards), model, str(cache), progress=False)
        base = ["--config", str(ROOT / "configs/tiny-wan.yaml"), f"model={model}", f"data.shards={shards}",
                f"data.cache={cache}", "log.progress_bar=false", "train.max_steps=3", "train.checkpoint_every=0",
                ]
        val = ["validation.every=1", "validation.num_clips=2", "validation.sample.steps=2",
               "validation.prompts=[exp style a red room, exp style a blue room]"]
        for i in range(args.repeats):
            for name, extra in (("without", ["validation.every=0"]), ("with", val)):
                out = work / f"run-{Path(model).name}-{name}-{i}"
                r = measure(work, out.name, [*base, f"train.output_dir={out}", *extra])
                results.setdefault(Path(model).name, {}).setdefault(name, []).append(r)
                print(f"{Path(model).name:14s} {name:8s} peak {r['peak_mib']:7.1f} MiB  RSS at steps {r['step_rss_mib']}", flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
