"""Caption sources (sidecar > VLM > template) and cleaning."""
from __future__ import annotations

import json

import pytest

from reelora.data.build import build
from reelora.data.captions import (captioner_for, clean_caption, load_sidecar, sidecar_caption, template_caption,
                                   with_trigger)
from reelora.data.manifest import load_library
from reelora.data.stage import UNCAPTIONED, WORK, stage_title, staged_status
from reelora.data.video import decode_clip
from tests.data.conftest import shard_metas, tiny_config, write_library
from tests.media import make_video


def test_clean_caption():
    assert clean_caption("  a\tb\n\nc \x00 d  ") == "a b c d"
    assert clean_caption("caf\u0065\u0301") == "caf\u00e9"  # NFC
    assert clean_caption("bad \udcff surrogate") == "bad ? surrogate"
    long = "word " * 100
    out = clean_caption(long, max_chars=42)
    assert len(out) <= 42 and out.endswith("word") and "  " not in out


def test_sidecar_lookup_and_bad_lines(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"start": 0, "end": 2, "caption": "first"}\n{"start": 2, "end": 3}\n'
                  b'{"start": 2, "end": 4, "caption": "second \xff"}\n')
    entries, problems = load_sidecar(p)
    assert [e.caption for e in entries] == ["first", "second \ufffd"]
    assert len(problems) == 1 and f"{p}:2:" in problems[0]
    assert sidecar_caption(entries, 0.0, 1.0) == "first"
    assert sidecar_caption(entries, 1.8, 2.8) == "second \ufffd"  # the entry covering most of the clip
    assert sidecar_caption(entries, 1.5, 2.5) == "first"  # a tie goes to the earlier entry
    assert sidecar_caption(entries, 3.8, 4.8) is None  # covers less than half
    assert template_caption("exp style", "Title", "desc") == "exp style, Title: desc"
    assert template_caption("", "Title", "") == "Title"


def make_tiny_blip(directory):
    """A randomly initialised BLIP captioner of the real class, saved like a hub model."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    try:
        from transformers import BlipImageProcessorPil as ImageProcessor  # no torchvision needed
    except ImportError:
        from transformers import BlipImageProcessor as ImageProcessor
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"a the red green room box with bunny".split(),
             *[chr(c) for c in range(97, 123)]]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"))
    processor = BlipProcessor(image_processor=ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_vlm_captions_clips_without_a_sidecar_from_the_stored_clip(tmp_path):
    """Staging leaves VLM clips waiting (what a CPU-only Ray staging worker hands on); the build then only
    captions them, from the stored clip's frames, and keeps the staged clips."""
    pytest.importorskip("transformers")
    model = make_tiny_blip(tmp_path / "tiny-blip")
    make_video(tmp_path / "v.mp4", 2, 8, 96, 64)
    (tmp_path / "v.jsonl").write_text(json.dumps({"start": 0, "end": 1, "caption": "from the sidecar"}) + "\n")
    lib = write_library(tmp_path, [{"id": "v", "path": "v.mp4", "captions": "v.jsonl"}])
    cfg = tiny_config(captioner=str(model), caption_max_chars=60)
    library, work = load_library(lib), tmp_path / "out" / WORK
    staged = stage_title(library.title("v"), cfg, library.trigger, work)
    assert staged.status == UNCAPTIONED and staged_status(staged, library.title("v"), cfg) == UNCAPTIONED
    waiting = {c.meta["start_s"]: c.meta for c in staged.clips}
    assert waiting[1.0]["caption_source"] == "vlm" and waiting[1.0]["caption"] == ""
    assert waiting[0.0]["caption"] == "tst style, from the sidecar"
    stored = {p.name: p.stat().st_mtime_ns for p in (work / "v" / "clips").iterdir()}

    summary = build(lib, tmp_path / "out", cfg)
    assert summary.titles_staged == 1 and summary.clips == 2
    assert {p.name: p.stat().st_mtime_ns for p in (work / "v" / "clips").iterdir()} == stored  # captioned only
    metas = {m["start_s"]: m for m in shard_metas(tmp_path / "out")}
    assert metas[0.0]["caption_source"] == "sidecar" and metas[0.0]["caption"] == "tst style, from the sidecar"
    vlm = metas[1.0]
    assert vlm["caption_source"] == "vlm"
    assert vlm["caption"].startswith("tst style, ") and len(vlm["caption"]) > len("tst style, ")
    assert len(vlm["caption"]) <= 60 and vlm["caption"] == clean_caption(vlm["caption"])
    # the VLM saw the stored clip's decoded frames (the same bytes on any engine), not the raw ones
    captioner = captioner_for(cfg)
    frames = decode_clip((work / "v" / "clips" / f"{vlm['key']}.mp4").read_bytes()).permute(0, 2, 3, 1).numpy()
    text = captioner.caption_batch([captioner.pick(frames)])[0]
    assert vlm["caption"] == clean_caption(with_trigger("tst style", text), 60)


def test_unloadable_captioner_fails_before_any_work(tmp_path):
    make_video(tmp_path / "v.mp4", 1, 8, 96, 64)
    lib = write_library(tmp_path, [{"id": "v", "path": "v.mp4"}])
    with pytest.raises(ValueError, match="captioner=.*no-such-model"):
        build(lib, tmp_path / "out", tiny_config(captioner=str(tmp_path / "no-such-model")))
    assert not (tmp_path / "out" / "work" / "v").exists()


def test_sidecars_are_bounded(tmp_path, monkeypatch):
    import os

    import reelora.data.captions as caps

    p = tmp_path / "c.jsonl"
    line = json.dumps({"start": 0, "end": 2, "caption": "fine"})
    p.write_text(line + "\n" + json.dumps({"start": 2, "end": 4, "caption": "x" * 70_000}) + "\n")
    entries, problems = load_sidecar(p)  # an over-long line is skipped and reported, like a bad one
    assert [e.caption for e in entries] == ["fine"] and f"{p}:2: skipped caption line (70" in problems[0]
    monkeypatch.setattr(caps, "MAX_SIDECAR_BYTES", 100)
    with pytest.raises(caps.SidecarError, match=rf"caption sidecar {p}: \d+ bytes, more than the 100"):
        load_sidecar(p)
    monkeypatch.setattr(caps, "MAX_SIDECAR_LINES", 3)
    p.write_text("\n" * 4)
    with pytest.raises(caps.SidecarError, match=rf"caption sidecar {p}: 4 lines, more than the 3"):
        load_sidecar(p)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)  # would block a reader forever
    with pytest.raises(caps.SidecarError, match="not a regular file"):
        load_sidecar(fifo)
