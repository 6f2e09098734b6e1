"""Caption throughput of a video VLM through reelora's captioner (data/captions.py VLMCaptioner): clips per second.

The model is Qwen2.5-VL at a published size (3B or 7B config) with random weights built on the device (nothing is
downloaded; the captioner's loader is handed that model), so the captions are noise but the work per clip is the
real one: the processor's resize and patching of --frames frames per clip, the vision tower, the prompt's video
tokens and --new-tokens generated tokens (forced: random weights would stop at random points).

    python benchmarks/bench_caption.py --size 3b --device cuda --batch 1,8 --json out.json

Needs torchvision (transformers' Qwen-VL video processors), built for the installed torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

# published text/vision sizes (Qwen/Qwen2.5-VL-{3B,7B}-Instruct config.json); vocab 151936 / 152064
PUBLISHED = {
    "3b": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31])),
    "7b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31])),
}


def build(size: str, directory: Path, device: str):
    """(processor directory, model): the tests' word-level tokenizer and Qwen's processor classes at their
    default video sizes, and a random Qwen2.5-VL of the published `size` in bf16 (fp32 on CPU) on `device`."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

    from tests.data.test_vlm_captions import make_tiny_qwen_vl

    tiny = make_tiny_qwen_vl(directory)  # tokenizer + chat template + token ids (small vocab inside a big embedding)
    small = Qwen2_5_VLProcessor.from_pretrained(tiny)
    processor = Qwen2_5_VLProcessor(image_processor=small.image_processor, video_processor=Qwen2VLVideoProcessor(),
                                    tokenizer=small.tokenizer, chat_template=small.chat_template)
    processor.save_pretrained(directory)
    cfg = Qwen2_5_VLConfig.from_pretrained(tiny)
    p = PUBLISHED[size]
    t = cfg.text_config
    text = dict(p["text"], max_position_embeddings=128000, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                pad_token_id=t.pad_token_id,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6})
    config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(p["vision"]),
                              image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                              vision_start_token_id=cfg.vision_start_token_id,
                              vision_end_token_id=cfg.vision_end_token_id)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return directory, model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(PUBLISHED), default="3b", help="published Qwen2.5-VL size")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", default="1,8", help="clips per generate call, comma-separated")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip the model sees (--caption-frames)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--new-tokens", type=int, default=30, help="caption length in tokens (--caption-max-tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch
    import transformers

    from reelora.data.captions import VLMCaptioner

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (81, args.height, args.width, 3), dtype=np.uint8)  # an 81-frame clip, as built
    results = {"model": f"Qwen2.5-VL-{args.size.upper()} config, random weights", "device": args.device,
               "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
               "frames": args.frames, "size": f"{args.height}x{args.width}", "new_tokens": args.new_tokens, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        directory, model = build(args.size, Path(tmp) / "vlm", args.device)
        model.generation_config.min_new_tokens = args.new_tokens
        results["params"] = sum(p.numel() for p in model.parameters())
        with mock.patch.object(transformers.AutoModelForImageTextToText, "from_pretrained", return_value=model):
            captioner = VLMCaptioner(str(directory), max_new_tokens=args.new_tokens, device=args.device,
                                     frames=args.frames, batch_size=1)
        for batch in (int(b) for b in args.batch.split(",")):
            captioner.batch_size = batch
            picks = [captioner.pick(clip) for _ in range(batch)]
            captioner.caption_batch(picks)  # warm-up
            times = []
            for _ in range(args.repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                captioner.caption_batch(picks)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            s = float(np.median(times))
            run = {"batch": batch, "s_per_call": round(s, 3), "clips_per_s": round(batch / s, 2),
                   "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1) if args.device.startswith("cuda") else None}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
