"""`reelora studio` in a real browser: headless Chromium (Playwright) drives the page the command serves.

The adapters are made the way tests/models/conftest.py makes them (what training writes: diffusers keys,
rank/alpha metadata, `reelora.*` lineage), laid out like training outputs, so discovery, lineage display,
sampling and the gallery all run on the real code paths. One browser session, tiny sizes, 2 steps.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from reelora.models.media import read_mp4
from tests.models.conftest import ALPHA, LINEAGE, lora_state_dict, to_comfyui, write_diffusers

PROMPT = "exp style, a red room"
SETTINGS = {"seed": "3", "steps": "2", "frames": "9", "height": "32", "width": "32"}
TRIGGER = "exp style"


def find_chromium() -> str | None:
    """REELORA_CHROMIUM, else a Chromium/Chrome on PATH (the system's browser: no `playwright install`)."""
    given = os.environ.get("REELORA_CHROMIUM")
    if given:
        return given
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def reelora_command() -> list[str]:
    """The `reelora` console script of this environment (as a user runs it), else `python -m reelora.cli`."""
    script = Path(sys.executable).parent / "reelora"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "reelora.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory) -> Path:
    """style-a/adapter/ (a training run's folder: diffusers file + ComfyUI export, lineage with a trigger word),
    grain.safetensors (no lineage), checkpoints/ (resume state: skipped), a latent cache entry (not a LoRA:
    passed over) and a pickle posing as safetensors (listed as unusable)."""
    root = tmp_path_factory.mktemp("adapters")
    sd, cfg = lora_state_dict("tiny-wan", seed=1)
    lineage = {**LINEAGE, "reelora.trigger": json.dumps(TRIGGER), "reelora.step": "3"}
    write_diffusers(root / "style-a" / "adapter" / "pytorch_lora_weights.safetensors", sd, cfg, lineage)
    write_diffusers(root / "style-a" / "adapter" / "comfyui_lora.safetensors", to_comfyui(sd, ALPHA), None, lineage)
    sd2, cfg2 = lora_state_dict("tiny-wan", seed=2)
    write_diffusers(root / "grain.safetensors", sd2, cfg2)
    ckpt = root / "style-a" / "checkpoints" / "step-000003"
    ckpt.mkdir(parents=True)
    write_diffusers(ckpt / "lora.safetensors", {k.removeprefix("transformer."): v for k, v in sd.items()}, None)
    (root / "old.safetensors").write_bytes(b"\x80\x04\x95pickle")
    write_diffusers(root / "cache" / "latents" / "ab" / "ab01.safetensors", {"latents": torch.zeros(4, 2, 4, 4)}, None)
    return root


def test_catalog_lists_each_adapter_once_with_its_lineage(adapters_dir):
    from reelora.studio.catalog import find_adapters

    entries = {e.key: e for e in find_adapters(adapters_dir, "wan")}
    # the folder stands for its exports; checkpoints/ and the cache are passed over; the fake file is listed
    assert sorted(entries) == ["grain.safetensors", "old.safetensors", "style-a/adapter"]
    assert "pickle" in entries["old.safetensors"].error and entries["old.safetensors"].adapter is None
    info = entries["style-a/adapter"].lineage()
    assert info["trigger"] == TRIGGER and info["titles"] == ["title-001", "title-002"]
    assert (info["rank"], info["alpha"], info["base_model"], info["step"]) == (4, 8, "tiny-wan", 3)
    text = entries["style-a/adapter"].describe()
    assert f"`{TRIGGER}`" in text and "title-001, title-002" in text and "rank 4, alpha 8" in text
    assert entries["grain.safetensors"].lineage()["trigger"] is None
    assert "no training lineage" in entries["grain.safetensors"].describe()
    with pytest.raises(FileNotFoundError, match="--adapters .*missing: not a folder"):
        find_adapters(adapters_dir / "missing")


def test_studio_without_gradio_names_the_extra(monkeypatch, tmp_path, capsys):
    from reelora.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    assert main(["studio", "--model", "tiny-wan", "--adapters", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "reelora studio: error: reelora studio needs gradio" in err and "pip install 'reelora[studio]'" in err


def _wait_for_page(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"reelora studio exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"reelora studio did not serve {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_studio_in_chromium_samples_what_reelora_sample_samples(adapters_dir, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set REELORA_CHROMIUM to a Chrome/Chromium binary)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the `test` extra: pip install 'reelora[test]'")
    pytest.importorskip("gradio", reason="gradio is in the `studio` extra: pip install 'reelora[studio]'")

    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    # The reference clip from the command line, in its own process, while the studio starts.
    cli_out = tmp_path / "cli"
    reference = subprocess.Popen(
        [*reelora_command(), "sample", "--model", "tiny-wan", "--lora", f"{adapters_dir / 'style-a' / 'adapter'}:1.0",
         "--prompt", PROMPT, "--seed", SETTINGS["seed"], "--steps", SETTINGS["steps"], "--num-frames", SETTINGS["frames"],
         "--height", SETTINGS["height"], "--width", SETTINGS["width"], "--out", str(cli_out), "--quiet",
         "--no-contact-sheet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port, log = free_port(), tmp_path / "studio.log"
    with open(log, "w") as log_fh:
        server = subprocess.Popen([*reelora_command(), "studio", "--model", "tiny-wan", "--adapters", str(adapters_dir),
                                   "--port", str(port), "--out", str(tmp_path / "clips")],
                                  env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_page(url, server, log)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("#generate")
            # the adapters with their lineage; the unusable file listed apart with its reason
            assert page.get_by_text(f"trigger: {TRIGGER}").count() == 1 and page.get_by_text("titles: title-001, title-002").count() == 1
            assert page.get_by_text("1 file(s) not offered").count() == 1

            page.locator("#prompts textarea").fill(PROMPT)
            page.locator("#seed input").fill(SETTINGS["seed"])
            page.locator("#lock input").check()
            for key in ("steps", "frames", "height", "width"):
                box = page.locator(f"#{key} input[type=number]")
                box.fill(SETTINGS[key])
                box.press("Enter")
            page.get_by_label("use style-a/adapter").check()
            # every text the page shows while it works, so a progress line that lasts a moment is still seen
            page.evaluate("""() => { window.seen = [];
                new MutationObserver(() => window.seen.push(document.body.innerText.match(/\\d+\\/\\d+ steps/g)))
                    .observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
            page.locator("#generate").click()
            page.wait_for_function("() => document.querySelector('#clip video')?.readyState >= 2", timeout=120_000)

            video = page.locator("#clip video")
            assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [32, 32]  # the browser decoded it
            seen = {s for hit in page.evaluate("window.seen") if hit for s in hit}
            assert seen & {"1/2 steps", "2/2 steps"}, f"no sampling progress shown (saw {seen})"
            status = page.locator("#status").inner_text()
            assert f"seed {SETTINGS['seed']}" in status and "style-a/adapter x1" in status
            assert page.locator("#seed input").input_value() == SETTINGS["seed"]  # locked: kept
            with urllib.request.urlopen(urllib.parse.urljoin(url, video.get_attribute("src"))) as r:
                (tmp_path / "played.mp4").write_bytes(r.read())
            downloads = "".join(page.locator("#download").inner_text().split())  # names break at the extension
            page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)

            # compare: base and the adapter with the same seed, side by side
            page.locator("#compare").click()
            page.wait_for_function("() => /left to right/.test(document.querySelector('#status')?.innerText)",
                                   timeout=120_000)
            assert "compare, left to right: base | style-a/adapter x1 · seed 3" in page.locator("#status").inner_text()
            page.wait_for_function("() => document.querySelectorAll('#gallery .thumbnail-item').length == 3")
            browser.close()
        assert reference.wait(timeout=120) == 0, reference.stdout.read()
    finally:
        for proc in (server, reference):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    (cli_mp4,) = cli_out.glob("*.mp4")
    played, _ = read_mp4(tmp_path / "played.mp4")
    expected, _ = read_mp4(cli_mp4)
    assert played.shape == (9, 32, 32, 3)
    differ = [i for i in range(len(expected)) if not np.array_equal(played[i], expected[i])]
    assert not differ, (f"studio frames {differ} differ from `reelora sample` by up to "
                        f"{np.abs(played.astype(int) - expected).max()}/255")

    clips = tmp_path / "clips"
    (single,) = [p for p in clips.glob("*.mp4") if not re.search(r"-(base|style-a-adapter-x1)\.mp4$", p.name)]
    assert single.name in downloads and single.with_suffix(".json").name in downloads
    prov, ref = json.loads(single.with_suffix(".json").read_text()), json.loads(cli_mp4.with_suffix(".json").read_text())
    assert [(a["sha256"], a["scale"]) for a in prov["adapters"]] == [(a["sha256"], a["scale"]) for a in ref["adapters"]]
    assert prov["adapters"][0]["lineage"]["reelora.trigger"] == TRIGGER
    # the compare panels: the adapter panel is the clip above (same process, same seed); the base one is not
    (base,) = clips.glob("*-base.mp4")
    (styled,) = clips.glob("*-style-a-adapter-x1.mp4")
    assert np.array_equal(read_mp4(styled)[0], played) and not np.array_equal(read_mp4(base)[0], played)
    assert json.loads(base.with_suffix(".json").read_text())["adapters"] == []
    (grid,) = (clips / "compare").glob("*-compare.mp4")
    assert read_mp4(grid)[0].shape == (9, 32, 64, 3)
    side = json.loads(grid.with_suffix(".json").read_text())
    assert side["compare"]["columns"] == ["base", "style-a/adapter x1"]
    assert [[len(panel["adapters"]) for panel in row] for row in side["panels"]] == [[0, 1]]
    assert (tmp_path / "studio.png").stat().st_size > 10_000
