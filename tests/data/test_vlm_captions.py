"""VLM captions through a real `reelora shards build`: chat video VLMs (Qwen2.5-VL class) and image
captioners (BLIP), several clips per generate call, one model load per staging worker."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from reelora.cli import main as reelora_main
from reelora.data.captions import sample_frame_indices
from tests.data.conftest import shard_metas, write_library
from tests.data.test_captions import make_tiny_blip
from tests.media import make_video

WORDS = "user assistant a the red green room box with bunny moving camera scene describe this clip in one sentence".split()
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
# Qwen2-VL's chat template, cut to what a caption needs: text, images and videos in user turns
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def torchvision_problem() -> str | None:
    """Why the Qwen-VL video processors (torchvision transforms) can't run here, or None if they can."""
    try:
        import torchvision.transforms.v2.functional  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA-only torchvision wheel on a CPU torch (RuntimeError)
        return f"transformers' Qwen-VL video processors need torchvision, which does not import here ({exc})"
    return None


def make_tiny_qwen_vl(directory: Path) -> Path:
    """A randomly initialised Qwen2.5-VL (1 text layer, 1 vision block, hidden 32) with a word-level tokenizer
    built here and the real processor classes, saved like a hub model (nothing downloaded)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLVideoProcessor)

    try:
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import Qwen2VLImageProcessor as ImageProcessor
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS + [".", ",", "[UNK]"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="<|endoftext|>",
                                        eos_token="<|im_end|>", additional_special_tokens=SPECIAL)
    tokenizer.chat_template = CHAT_TEMPLATE
    pixels = {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}  # a 48x32 frame becomes 2x4 patches of 14 px
    processor = Qwen2_5_VLProcessor(image_processor=ImageProcessor(size=pixels),
                                    video_processor=Qwen2VLVideoProcessor(size=pixels), tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           window_size=56, fullatt_block_indexes=[0]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.generation_config.pad_token_id = vocab["<|endoftext|>"]
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture
def vlm_log(tmp_path, monkeypatch) -> Path:
    """Record every captioner load and generate call of the staging workers (a sitecustomize on PYTHONPATH
    wraps the real class in each worker process) into a JSONL file."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent('''
        import json, os
        LOG = os.environ.get("REELORA_TEST_VLM_LOG")
        if LOG:
            import reelora.data.captions as captions
            def log(**event):
                with open(LOG, "a") as f:
                    f.write(json.dumps({"pid": os.getpid(), **event}) + "\\n")
            init = captions.VLMCaptioner.__init__
            def logged_init(self, *args, **kwargs):
                init(self, *args, **kwargs)
                log(event="load", chat=self.chat, device=self.device)
                generate = self.model.generate
                def logged_generate(**inputs):
                    video = inputs.get("pixel_values_videos") is not None
                    log(event="generate", batch=int(inputs["input_ids" if "input_ids" in inputs else "pixel_values"].shape[0]),
                        video=video, grid=inputs["video_grid_thw"].tolist() if video else None,
                        prompt=self.processor.batch_decode(inputs["input_ids"])[0] if self.chat else None)
                    return generate(**inputs)
                self.model.generate = logged_generate
            captions.VLMCaptioner.__init__ = logged_init
    '''))
    log = tmp_path / "vlm.jsonl"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("REELORA_TEST_VLM_LOG", str(log))
    return log


def _build(tmp_path: Path, titles: int, model: Path, *extra: str) -> tuple[list[dict], list[dict]]:
    """3-second videos (3 one-second clips each) built with the VLM; returns (clip metas, logged events)."""
    for i in range(titles):
        make_video(tmp_path / f"v{i}.mp4", 3, 8, 96, 64, palette_offset=i)
    lib = write_library(tmp_path, [{"id": f"v{i}", "path": f"v{i}.mp4", "title": f"V{i}"} for i in range(titles)])
    out = tmp_path / "out"
    rc = reelora_main(["shards", "build", str(lib), "--out", str(out), "--num-frames", "8", "--fps", "8",
                       "--height", "32", "--width", "48", "--preset", "ultrafast", "--as-of", "2026-01-01",
                       "--captioner", str(model), "--caption-batch", "2", "--caption-max-tokens", "3",
                       "--scene-detector", "pyscenedetect",  # captions do not depend on the detector: the cheap one
                       *extra])
    assert rc == 0
    events = [json.loads(line) for line in (tmp_path / "vlm.jsonl").read_text().splitlines()]
    return shard_metas(out), events


def test_image_captioner_batches_clips_and_loads_once_per_worker(tmp_path, vlm_log):
    metas, events = _build(tmp_path, 2, make_tiny_blip(tmp_path / "tiny-blip"), "--workers", "1")
    assert len(metas) == 6 and {m["caption_source"] for m in metas} == {"vlm"}
    assert all(m["caption"].startswith("tst style, ") and len(m["caption"]) > len("tst style, ") for m in metas)
    loads = [e for e in events if e["event"] == "load"]
    gens = [e for e in events if e["event"] == "generate"]
    # one worker, two titles: loaded once (not once per title), on the device "auto" finds
    assert len(loads) == 1 and not loads[0]["chat"] and loads[0]["device"] == ("cuda" if cuda() else "cpu")
    assert {e["pid"] for e in gens} == {loads[0]["pid"]}
    # 3 clips per title, --caption-batch 2: a batch of 2 then 1, for each title
    assert [e["batch"] for e in gens] == [2, 1, 2, 1] and not any(e["video"] for e in gens)


def test_chat_video_vlm_captions_frames_as_a_video(tmp_path, vlm_log):
    problem = torchvision_problem()
    if problem:
        pytest.skip(problem)
    model = make_tiny_qwen_vl(tmp_path / "tiny-qwen-vl")
    metas, events = _build(tmp_path, 2, model, "--workers", "1", "--caption-frames", "4",
                           "--captioner-prompt", "describe this clip in one sentence")
    assert len(metas) == 6 and {m["caption_source"] for m in metas} == {"vlm"}
    assert all(m["caption"].startswith("tst style, ") for m in metas)
    loads = [e for e in events if e["event"] == "load"]
    gens = [e for e in events if e["event"] == "generate"]
    assert len(loads) == 1 and loads[0]["chat"]  # one worker, two titles: loaded once
    assert [e["batch"] for e in gens] == [2, 1, 2, 1]
    # 4 frames of 32x48 -> Qwen's 2-frame temporal patches on a 2x4 grid of 14-px patches, per clip
    assert all(e["video"] and e["grid"] == [[2, 2, 4]] * e["batch"] for e in gens)
    # the chat template's prompt (this tokenizer decodes with spaces between tokens), the video expanded to its
    # 2x2x4 / 2x2 merge = 4 tokens
    for e in gens:
        assert e["prompt"].count("<|video_pad|>") == 4
        assert e["prompt"].endswith("<|vision_end|> describe this clip in one sentence <|im_end|> <|im_start|> assistant")


def test_sample_frame_indices():
    assert sample_frame_indices(81, 4) == [0, 27, 53, 80]
    assert sample_frame_indices(8, 1) == [4]
    assert sample_frame_indices(3, 8) == [0, 1, 2]
