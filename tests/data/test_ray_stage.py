"""`--engine ray`: the local engine's shards, on a Ray instance (2 CPUs) started as a user would, with a
CPU staging pool and a separate caption pool; a lost worker is retried and a killed driver resumes
without redoing finished titles (a staged, uncaptioned title is only captioned)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reelora.data.build import build
from reelora.data.ray_stage import Pools, plan_pools
from tests.data.conftest import shard_hashes, shard_metas, tiny_config
from tests.data.test_captions import make_tiny_blip
from tests.data.test_determinism_resume import _library

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ARGS = ["--num-frames", "8", "--fps", "8", "--height", "32", "--width", "48", "--preset", "ultrafast",
        "--scene-detector", "pyscenedetect",
        "--as-of", "2026-01-01"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --num-cpus 2` (what a user runs on the head node); stopped afterwards."""
    port = _free_port()
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Ray's socket paths must stay short
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--port", str(port),
                    "--include-dashboard", "false", "--temp-dir", str(temp), "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def _reelora(*args: str) -> list[str]:
    return [str(BIN / "reelora"), *args]


def _staging_children() -> dict[int, int]:
    """pid -> parent pid of every running staging worker (`python -m reelora.data.schedule --serve ...`)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if b"reelora.data.schedule" in cmd and b"--serve" in cmd:
            found[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def _status(result: Path) -> str | None:
    try:
        return json.loads(result.read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the Ray workers through /proc")
def test_ray_engine_matches_local_and_resumes_after_lost_worker_and_killed_driver(tmp_path, ray_head):
    lib = _library(tmp_path)
    blip = make_tiny_blip(tmp_path / "tiny-blip")
    local = build(lib, tmp_path / "local", tiny_config(workers=1, captioner=str(blip)))
    assert local.clips == 6 and not local.quarantined
    assert {m["caption_source"] for m in shard_metas(tmp_path / "local")} == {"vlm"}

    # a driver on the cluster; the Ray actor of the first staging worker is killed (a lost worker: Ray
    # restarts it and reruns its title), then the driver is killed once a title waits for its captions
    out = tmp_path / "ray"
    command = _reelora("shards", "build", str(lib), "--out", str(out), *ARGS, "--captioner", str(blip),
                       "--engine", "ray", "--ray-address", ray_head)
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        killed_worker = None
        while time.time() < deadline and killed_worker is None and driver.poll() is None:
            children = _staging_children()
            if children:
                child, worker = next(iter(children.items()))
                os.kill(worker, signal.SIGKILL)
                killed_worker = worker
            time.sleep(0.01)
        assert killed_worker is not None, "no staging child seen: " + driver.stdout.read().decode()
        while time.time() < deadline and driver.poll() is None and \
                not any(_status(p) == "uncaptioned" for p in out.glob("work/*/result.json")):
            time.sleep(0.01)
        assert driver.poll() is None, "the driver ended on its own: " + driver.stdout.read().decode()
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert not (out / "index.json").exists()

    # the rerun: finished titles are skipped, staged ones only captioned, the rest staged, and the shards
    # are the local engine's bytes
    time.sleep(1.0)  # Ray ends the dead driver's tasks; a title it finished meanwhile is also kept
    results = list(out.glob("work/*/result.json"))
    finished = {p.parent.name: p.stat().st_mtime_ns for p in results if _status(p) == "done"}
    waiting = {p.parent.name for p in results if _status(p) == "uncaptioned"}
    assert waiting
    clips = {c: c.stat().st_mtime_ns for t in waiting for c in (out / "work" / t / "clips").iterdir()}
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0 and "quarantined" not in rerun.stderr, rerun.stdout + rerun.stderr
    assert f"({len(finished)} titles already staged, {3 - len(finished)} staged now)" in rerun.stdout
    # 2 CPUs: one goes to the caption worker (no GPU here), the other to a staging worker
    staging = min(1, 3 - len(finished) - len(waiting))
    assert f"ray: {staging} staging workers (CPU), 1 caption workers (on CPU: the cluster has no GPU)" \
        in rerun.stderr, rerun.stderr
    assert {t: (out / "work" / t / "result.json").stat().st_mtime_ns for t in finished} == finished
    assert {c: c.stat().st_mtime_ns for c in clips} == clips  # staged titles were only captioned
    assert {_status(p) for p in out.glob("work/*/result.json")} == {"done"}
    assert shard_hashes(out) == shard_hashes(tmp_path / "local")
    for name in ("index.json", "audit.json"):
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_pools_are_planned_from_the_cluster():
    """CPU staging and GPU captioning are sized apart, from what the cluster holds."""
    cfg = tiny_config(engine="ray", captioner="some-vlm")
    big = {"CPU": 64.0, "GPU": 8.0}
    assert plan_pools(big, cfg, 1000, 1000) == Pools(56, 8, 1.0)  # a CPU for each caption worker
    assert plan_pools(big, tiny_config(engine="ray", captioner="m", ray_gpus_per_captioner=0.5,
                                       ray_cpus_per_title=4), 1000, 1000) == Pools(12, 16, 0.5)
    assert plan_pools(big, tiny_config(engine="ray", ray_workers=10, ray_caption_workers=2), 1000, 1000) == Pools(10, 2, 1.0)
    assert plan_pools(big, cfg, 1000, 0) == Pools(64, 0, 1.0)  # nothing to caption: every CPU stages
    assert plan_pools(big, cfg, 0, 3) == Pools(0, 3, 1.0)  # only captions left (a resumed build)
    assert plan_pools({"CPU": 2.0}, cfg, 3, 3) == Pools(1, 1, 0.0)  # no GPU: one caption worker on a CPU
    assert plan_pools(big, tiny_config(engine="ray", captioner="m", caption_device="cpu"), 5, 5).caption_gpus == 0.0
    assert "8 caption workers (1 GPU each)" in plan_pools(big, cfg, 9, 9).describe()


def test_engine_settings_are_checked():
    with pytest.raises(ValueError, match="engine"):
        tiny_config(engine="spark")
    with pytest.raises(ValueError, match="ray_address.*needs --engine ray"):
        tiny_config(ray_address="auto")
    with pytest.raises(ValueError, match="ray_gpus_per_captioner=0"):
        tiny_config(ray_gpus_per_captioner=0)
    with pytest.raises(ValueError, match="ray_caption_workers=-1"):
        tiny_config(ray_caption_workers=-1)
    # where titles are staged is not what comes out: the engine never re-stages a title
    assert tiny_config(engine="ray").stage_settings() == tiny_config().stage_settings()
