# reelora on a CUDA GPU box. ./runs holds what outlives the container: shards (`reelora shards build ... --out
# runs/shards`), the cache and the run; the mounted HF cache keeps the downloaded base between runs.
#   docker build -t reelora .
#   docker run --gpus all --ipc=host -v $PWD/runs:/app/runs -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#     reelora reelora cache --shards runs/shards --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --out runs/cache --dtype bf16
#   docker run --gpus all --ipc=host -v $PWD/runs:/app/runs -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#     reelora accelerate launch --config_file configs/accelerate/single-gpu.yaml train.py \
#     --config configs/wan2.1-t2v-1.3b-lora.yaml data.shards=runs/shards data.cache=runs/cache train.output_dir=runs/wan2.1-1.3b-lora
# Several GPUs: --config_file configs/accelerate/multi-gpu-ddp.yaml --num_processes N (N = the GPU count);
# Wan2.1 14B: the commands in the header of configs/wan2.1-t2v-14b-lora.yaml. The adapter and its model card
# (README.md: licence, trigger word, diffusers and ComfyUI usage) land in runs/wan2.1-1.3b-lora/adapter/.
# The image's torch is the CUDA build from the base image; setup keeps it (no CPU wheel swap).
FROM pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg git && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY reelora reelora
COPY data data
COPY models models
COPY train train
RUN pip install -e ".[test]"
COPY . .

CMD ["reelora", "--help"]
