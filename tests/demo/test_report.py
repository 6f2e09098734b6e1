"""The demo report: self-contained page, every picture exists, metrics from shards and sample folders."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from reelora.demo.report import build_report, main, missing_pictures, read_shard_clips


def _clip(colour, frames=5, size=16, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array(colour, np.float32)[None, None, None] + rng.normal(0, 0.05, (frames, size, size, 3))
    return (np.clip(base, 0, 1) * 255).astype(np.uint8)


def _write_samples(folder, clips, prompts):
    from reelora.models.media import contact_sheet, write_mp4

    folder.mkdir(parents=True)
    for i, (c, p) in enumerate(zip(clips, prompts)):
        write_mp4(folder / f"{i:03d}.mp4", c, fps=8)
        (folder / f"{i:03d}.json").write_text(json.dumps({"prompt": p, "seed": i}))
    contact_sheet(folder / "contact_sheet.png", list(zip(prompts, clips)))


def _write_shards(folder, clips):
    from reelora.data.shards import write_index, write_shard
    from reelora.models.media import write_mp4

    folder.mkdir(parents=True)
    samples = []
    for i, c in enumerate(clips):
        write_mp4(folder / "tmp.mp4", c, fps=8)
        meta = {"caption": f"clip {i}", "title_id": "t", "num_frames": len(c), "height": c.shape[1], "width": c.shape[2]}
        samples.append({"__key__": f"clip{i:04d}", "mp4": (folder / "tmp.mp4").read_bytes(), "json": json.dumps(meta).encode()})
    write_index(folder, [write_shard(folder / "shard-000000.tar", samples)])
    (folder / "tmp.mp4").unlink()
    (folder / "audit.json").write_text(json.dumps({
        "library": {"path": "library.yaml", "studio": "Test Pictures", "sha256": "0" * 64}, "as_of": "2026-01-01",
        "totals": {"clips": len(clips), "seconds_used": 1.5, "titles_used": 1, "titles": 2, "titles_excluded": 1,
                   "titles_quarantined": 0},
        "titles": {"t": {"status": "used", "clips": len(clips), "seconds_used": 1.5, "license": "CC-BY-3.0",
                         "rights_holder": "Someone", "excluded": [{"start_s": 0.0, "end_s": 1.0, "reason": "exclude range"}]},
                   "u": {"status": "excluded", "clips": 0, "seconds_used": 0.0, "reason": "no rights"}},
        "quarantine": [],
    }))


def test_page_references_only_existing_local_pictures(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "train/loss": 1.0 / s}) for s in range(1, 30)) + "\n"
                   + json.dumps({"step": 10, "val/loss": 0.5}) + "\n" + json.dumps({"step": 20, "val/loss": 0.3}) + "\n")
    sheet = tmp_path / "sheet.png"
    Image.new("RGB", (40, 20), "red").save(sheet)
    page = build_report(tmp_path / "run", metrics={"style_distance_base": 10.0, "style_distance_lora": 5.0, "x": {"y": 1}},
                        train_log=log, base_sheet=sheet, lora_sheet=sheet, studio_clips=[_clip((0.2, 0.6, 0.2))],
                        prompts=["a <b>bold</b> prompt"], audit={"totals": {"clips": 3}, "titles": {}})
    text = page.read_text()
    assert missing_pictures(page) == []
    for name in ("loss.png", "base_samples.png", "lora_samples.png", "studio_frames.png"):
        assert f'src="report_files/{name}"' in text
        Image.open(page.parent / "report_files" / name).verify()
    assert "50% closer" in text and "x.y" in text
    assert "&lt;b&gt;bold" in text  # prompts are escaped, not injected
    assert "http" not in text  # nothing loaded from elsewhere


def test_missing_pictures_are_reported(tmp_path):
    page = tmp_path / "p.html"
    page.write_text('<img src="report_files/gone.png"><img src="https://example.com/x.png">')
    assert missing_pictures(page) == ["report_files/gone.png", "https://example.com/x.png"]


def test_report_without_optional_parts_still_renders(tmp_path):
    page = build_report(tmp_path, metrics={})
    assert missing_pictures(page) == [] and "not available" in page.read_text()


def test_demo_report_measures_base_and_adapter_against_held_out_studio_clips(tmp_path):
    green = (0.3, 0.6, 0.25)
    _write_shards(tmp_path / "heldout", [_clip(green, seed=i) for i in range(3)])
    prompts = ["p one", "p two"]
    _write_samples(tmp_path / "base", [_clip((0.8, 0.2, 0.6), seed=i) for i in range(2)], prompts)
    _write_samples(tmp_path / "lora", [_clip((0.35, 0.55, 0.3), seed=i) for i in range(2)], prompts)
    clips, metas = read_shard_clips(tmp_path / "heldout")
    assert len(clips) == 3 and clips[0].shape == (5, 16, 16, 3) and metas[0]["caption"] == "clip 0"
    rc = main(["--run", str(tmp_path), "--heldout", str(tmp_path / "heldout"), "--train-shards", str(tmp_path / "heldout"),
               "--base-samples", str(tmp_path / "base"), "--lora-samples", str(tmp_path / "lora"),
               "--extra", '{"demo_seconds": 1.0}'])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["style_distance_lora"] < 0.5 * m["style_distance_base"]
    assert m["demo_seconds"] == 1.0 and m["num_clips"] == {"studio_heldout": 3, "base": 2, "lora": 2}
    text = (tmp_path / "report.html").read_text()
    assert missing_pictures(tmp_path / "report.html") == []
    assert "p two" in text and "Test Pictures" in text and "exclude range" in text


def test_demo_report_names_a_missing_shard_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    from reelora.data.shards import ShardError

    with pytest.raises(ShardError, match="no shard index"):
        read_shard_clips(tmp_path / "empty")


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not _chromium(), reason="no headless Chromium (apt-get install chromium)")
def test_page_renders_with_its_pictures_in_headless_chromium(tmp_path):
    import subprocess

    sheet = tmp_path / "sheet.png"
    Image.new("RGB", (200, 100), (230, 20, 20)).save(sheet)  # a red the page itself never uses
    page = build_report(tmp_path / "run", metrics={"style_distance_base": 2.0, "style_distance_lora": 1.0},
                        base_sheet=sheet, lora_sheet=sheet)
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,1200", f"--screenshot={shot}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=90)
    assert shot.is_file(), proc.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60)
    assert red.sum() > 2 * 150 * 60  # both contact sheets were loaded and drawn
