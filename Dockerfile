# reelora on a CUDA GPU box.
#   docker build -t reelora .
#   docker run --gpus all --ipc=host -v $PWD/runs:/app/runs -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#     reelora accelerate launch --config_file configs/accelerate/multi_gpu.yaml train.py --config configs/wan2.1-t2v-1.3b-lora.yaml
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
