"""`--engine ray`: the local engine's shards, on a Ray instance (2 CPUs) started as a user would; a lost
worker is retried and a killed driver resumes without redoing finished titles."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reelora.data.build import build
from tests.data.conftest import shard_hashes, tiny_config
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


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the Ray workers through /proc")
def test_ray_engine_matches_local_and_resumes_after_lost_worker_and_killed_driver(tmp_path, ray_head):
    lib = _library(tmp_path)
    local = build(lib, tmp_path / "local", tiny_config(workers=1))
    assert local.clips == 6 and not local.quarantined

    # a driver on the cluster; the Ray actor of the first staging worker is killed (a lost worker: Ray
    # restarts it and reruns its title), then the driver is killed once a title has finished
    out = tmp_path / "ray"
    driver = subprocess.Popen(_reelora("shards", "build", str(lib), "--out", str(out), *ARGS, "--engine", "ray",
                                       "--ray-address", ray_head), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        killed_worker = None
        while time.time() < deadline and killed_worker is None and driver.poll() is None:
            children = _staging_children()
            if children:
                child, worker = next(iter(children.items()))
                os.kill(worker, signal.SIGKILL)
                killed_worker = worker
            time.sleep(0.01)
        assert killed_worker is not None, "no staging child seen: " + driver.stdout.read().decode()
        while time.time() < deadline and driver.poll() is None and not list(out.glob("work/*/result.json")):
            time.sleep(0.01)
        assert driver.poll() is None, "the driver ended on its own: " + driver.stdout.read().decode()
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("work/*/result.json")}
    assert 1 <= len(finished) and not (out / "index.json").exists()

    # the rerun: finished titles are skipped, the rest staged, and the shards are the local engine's bytes
    time.sleep(1.0)  # Ray ends the dead driver's tasks; a title it finished meanwhile is also kept
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("work/*/result.json")}
    rerun = subprocess.run(_reelora("shards", "build", str(lib), "--out", str(out), *ARGS, "--engine", "ray",
                                    "--ray-address", ray_head), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0 and "quarantined" not in rerun.stderr, rerun.stdout + rerun.stderr
    assert f"({len(finished)} titles already staged, {3 - len(finished)} staged now)" in rerun.stdout
    assert {t: (out / "work" / t / "result.json").stat().st_mtime_ns for t in finished} == finished
    assert shard_hashes(out) == shard_hashes(tmp_path / "local")
    for name in ("index.json", "audit.json"):
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_engine_settings_are_checked():
    with pytest.raises(ValueError, match="engine"):
        tiny_config(engine="spark")
    with pytest.raises(ValueError, match="ray_address.*needs --engine ray"):
        tiny_config(ray_address="auto")
    # where titles are staged is not what comes out: the engine never re-stages a title
    assert tiny_config(engine="ray").stage_settings() == tiny_config().stage_settings()
