"""train.parallel=fsdp: FSDP2 over 2 processes (gloo on CPU) trains like DDP, exports full adapters, resumes exactly.

The launches mirror test_faults_ddp.py (`accelerate launch --multi_gpu`, which makes the process group;
train/parallel.py shards). With 2 processes a gradient sum a + b is the same in any order, and both sum the
micro-batches locally before reducing (no_sync), so FSDP's reduce-scatter and DDP's all-reduce give the same
bits: FSDP losses and adapters equal DDP's exactly. (When clipping engages, the global norm is summed in
another order and differs in the last bit: adapters ~3e-8 apart after 4 steps, measured, not asserted here.)
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import cfg_args, launch as run_launch, launch_cmd, tiny_cfg, user_env

ROOT = Path(__file__).parents[2]
ARGS = ("train.max_steps=6", "train.checkpoint_every=3", "optim.schedule=constant", "train.batch_size=1", "train.grad_accum=2")


def launch(port: int, *args, timeout=300):
    r = run_launch(port, str(ROOT / "train.py"), *args, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def adapter(out: Path) -> dict:
    return load_file(out / "adapter" / "pytorch_lora_weights.safetensors")


def losses(out: Path) -> list[float]:
    return [json.loads(line)["train/loss"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards, cache) -> dict[str, Path]:
    """6 steps under DDP and under FSDP (checkpoints at 3 and 6); FSDP with gradient checkpointing, which
    recomputes the same numbers and so is covered for free."""
    root = tmp_path_factory.mktemp("parallel")
    out = {"ddp": root / "ddp", "fsdp": root / "fsdp"}
    launch(29621, *cfg_args(out["ddp"], shards, cache, *ARGS))
    launch(29622, *cfg_args(out["fsdp"], shards, cache, *ARGS, "train.parallel=fsdp", "train.gradient_checkpointing=true"))
    return out


@pytest.mark.slow
def test_fsdp_exports_full_adapter_that_loads_into_a_fresh_tiny_wan(runs):
    from reelora.models.lora import DIFFUSERS_FILE, attach_lora, lora_state_dict
    from reelora.models.registry import load_model

    out = runs["fsdp"]
    assert not (out / "logs" / "replicas.json").exists()  # FSDP has no replicas to compare
    spec, comps = load_model("tiny-wan")
    fresh = load_model("tiny-wan", components=("transformer",))[1].transformer
    attach_lora(fresh, rank=4, alpha=4.0, target_modules=list(spec.lora_targets))
    expected = {f"transformer.{k}": v.shape for k, v in lora_state_dict(fresh).items()}
    sd = adapter(out)
    assert {k: v.shape for k, v in sd.items()} == expected  # full shapes, every key, not rank 0's shards

    pipe = spec.pipeline(comps)
    pipe.load_lora_weights(str(out / "adapter"), weight_name=DIFFUSERS_FILE)
    layer = comps.transformer.blocks[1].ffn.net[2]
    assert torch.equal(layer.lora_B["default_0"].weight, sd["transformer.blocks.1.ffn.net.2.lora_B.weight"])
    for step in (3, 6):  # checkpoints hold the full state too
        ck = out / "checkpoints" / f"step-{step:06d}"
        assert {k: v.shape for k, v in load_file(ck / "lora.safetensors").items()} == \
               {k.removeprefix("transformer."): s for k, s in expected.items()}
        assert json.loads((ck / "state.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_fsdp_matches_ddp(runs):
    assert losses(runs["fsdp"]) == losses(runs["ddp"])  # bitwise: see the module docstring
    a, b = adapter(runs["fsdp"]), adapter(runs["ddp"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_fsdp_resumes_exactly_from_fsdp_and_from_ddp_checkpoints(runs, tmp_path, shards, cache):
    # New processes continue from step 3 to 6; the checkpoint files are the same under DDP and FSDP.
    straight = adapter(runs["fsdp"])
    for port, source in ((29623, "fsdp"), (29624, "ddp")):
        out = tmp_path / f"from-{source}"
        step3 = runs[source] / "checkpoints" / "step-000003"
        r = launch(port, *cfg_args(out, shards, cache, *ARGS, "train.parallel=fsdp", f"train.resume={step3}"))
        assert "resumed from" in r.stdout + r.stderr
        assert losses(out) == losses(runs["fsdp"])[3:]
        resumed = adapter(out)
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[k], straight[k]) for k in straight), f"resume from the {source} checkpoint differs"


@pytest.mark.slow
def test_sigterm_under_fsdp_checkpoints_the_full_state_and_resumes_exactly(runs, tmp_path, shards, cache):
    """SIGTERM to the launcher (what a scheduler sends): both FSDP ranks stop at one step boundary and gather one
    full checkpoint; resumed, the run ends where the straight 6-step FSDP run ends, bit for bit."""
    import os
    import signal
    import time

    cut = tmp_path / "cut"
    # constant LR: max_steps only says where a run ends, so a 40-step run cut early continues as the 6-step one
    cmd = launch_cmd(29625, str(ROOT / "train.py"), *cfg_args(cut, shards, cache, *ARGS, "train.parallel=fsdp",
                     "train.gradient_checkpointing=true", "train.checkpoint_every=100", "train.max_steps=40"))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_env())
    log = cut / "logs" / "metrics.jsonl"
    deadline = time.time() + 200
    while not (log.is_file() and log.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=200)
    assert proc.returncode != 0 and (cut / "stopped.json").is_file(), err[-2000:]
    stopped = json.loads((cut / "stopped.json").read_text())
    step = stopped["step"]
    assert stopped["exit_code"] == 143 and 1 <= step < 40, (stopped, err[-2000:])
    ckpt = cut / "checkpoints" / f"step-{step:06d}"
    assert [p.name for p in (cut / "checkpoints").iterdir()] == [ckpt.name]
    full = {k: v.shape for k, v in load_file(ckpt / "lora.safetensors").items()}  # gathered, not rank 0's shard
    assert full == {k: v.shape for k, v in load_file(runs["fsdp"] / "checkpoints" / "step-000003" / "lora.safetensors").items()}
    n = min(step, 6)
    assert len(losses(cut)) == step and losses(cut)[:n] == losses(runs["fsdp"])[:n]  # the same run up to the signal
    # Resume to the straight run's end (on a box so loaded that the signal landed after step 5, one more step).
    end = 6 if step < 6 else step + 1
    r = launch(29626, *cfg_args(cut, shards, cache, *ARGS, "train.parallel=fsdp", "train.gradient_checkpointing=true",
                                "train.resume=latest", f"train.max_steps={end}"))
    assert not (cut / "stopped.json").exists() and len(losses(cut)) == end
    if end == 6:
        straight, resumed = adapter(runs["fsdp"]), adapter(cut)
        assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
        assert losses(cut) == losses(runs["fsdp"])


def test_parallelize_on_one_process_shards_blocks_and_root_and_gathers_full_state(tmp_path):
    """FSDP2 on a gloo group of one: blocks and root are sharded, the forward is unchanged, and the gathered
    LoRA/optimizer state is what the unsharded model and a plain optimizer give (names, indices, values)."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from reelora.models.lora import attach_lora, lora_state_dict
    from reelora.models.registry import load_model
    from reelora.train.parallel import (data_parallel_mesh, end_process_group, full_lora_state_dict,
                                        full_optimizer_state_dict, loadable_optimizer, parallelize)

    cfg = tiny_cfg(tmp_path, tmp_path, None, "train.parallel=fsdp")
    spec, comps = load_model("tiny-wan", components=("transformer",))
    model = comps.transformer
    attach_lora(model, rank=4, alpha=4.0, target_modules=list(spec.lora_targets), init="gaussian", seed=1)
    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    with torch.no_grad():
        before = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    lora_before = lora_state_dict(model)

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        parallelize(model, spec, cfg, data_parallel_mesh(SimpleNamespace(device=torch.device("cpu"), num_processes=1)))
        assert isinstance(model, FSDPModule) and all(isinstance(b, FSDPModule) for b in getattr(model, spec.blocks))
        params = [p for p in model.parameters() if p.requires_grad]
        assert params and all(isinstance(p, DTensor) for p in params)
        with torch.no_grad():
            after = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        assert torch.equal(before, after)

        full = full_lora_state_dict(model)
        assert full.keys() == lora_before.keys() and all(torch.equal(full[k], lora_before[k]) for k in full)

        opt = torch.optim.AdamW(params, lr=1e-3)
        model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0].pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # as at resume: no gradients yet
        gathered = full_optimizer_state_dict(model, opt)
        assert sorted(gathered["state"]) == list(range(len(params)))
        assert gathered["param_groups"][0]["params"] == list(range(len(params)))
        for i, p in enumerate(params):
            assert torch.equal(gathered["state"][i]["exp_avg"], opt.state[p]["exp_avg"].full_tensor())

        fresh = torch.optim.AdamW(params, lr=1e-3)  # the resume path: full state back into the shards
        loadable_optimizer(model, fresh).load_state_dict(gathered)
        for p in params:
            assert torch.equal(fresh.state[p]["exp_avg_sq"].full_tensor(), opt.state[p]["exp_avg_sq"].full_tensor())
    finally:
        del model, comps
        params = opt = fresh = gathered = full = None
        end_process_group()
    # The group is gone with its gloo threads, although DTensor's caches still hold the mesh: a gloo thread left
    # running can free a collective's tensors while Python finalizes and abort the process (train/parallel.py).
    assert not gloo_threads()


def gloo_threads() -> list[str]:
    """Names of this process's gloo threads (Linux: /proc/self/task/*/comm)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return [n for n in names if "gloo" in n]


def test_accelerate_fsdp_and_deepspeed_plugins_are_refused_naming_what_to_launch():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from reelora.train.config import ConfigError
    from reelora.train.parallel import check_launch

    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ConfigError, match="--multi_gpu .*train.parallel"):
            check_launch(SimpleNamespace(distributed_type=kind))
    check_launch(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))


def test_fsdp_refuses_fp16_naming_the_key():
    from reelora.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.parallel"):
        load_config(ROOT / "configs" / "tiny-wan.yaml", ["train.parallel=fsdp", "train.mixed_precision=fp16"])
    assert load_config(ROOT / "configs" / "tiny-wan.yaml", ["train.parallel=fsdp", "train.mixed_precision=bf16"])


@pytest.mark.slow
def test_tiny_ltx_trains_under_fsdp_as_under_ddp(tmp_path, shards):
    # LTX keeps its blocks in `transformer_blocks` (spec.blocks); no cache: each rank encodes its clips.
    args = ("model=tiny-ltx", "train.max_steps=2", "train.checkpoint_every=0", "train.batch_size=1")
    launch(29625, *cfg_args(tmp_path / "ddp", shards, None, *args))
    launch(29626, *cfg_args(tmp_path / "fsdp", shards, None, *args, "train.parallel=fsdp"))
    assert losses(tmp_path / "fsdp") == losses(tmp_path / "ddp")
    a, b = adapter(tmp_path / "fsdp"), adapter(tmp_path / "ddp")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


POISON = '''
import os, runpy, sys
from reelora.models.wan import WanSpec

real, calls = WanSpec.forward, [0]


def forward(self, *args):
    calls[0] += 1
    pred, target = real(self, *args)
    if calls[0] == 2 and os.environ["RANK"] == "1":  # step 2, on rank 1 only
        pred = pred * float("nan")
    return pred, target


WanSpec.forward = forward
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@pytest.mark.slow
def test_fsdp_nonfinite_loss_on_one_rank_stops_every_rank_before_the_optimizer_step(tmp_path, shards, cache):

    script = tmp_path / "poisoned.py"
    script.write_text(POISON)
    out = tmp_path / "run"
    cmd = launch_cmd(29627, str(script), str(ROOT / "train.py"),
                     *cfg_args(out, shards, cache, "train.max_steps=4", "train.checkpoint_every=1", "train.parallel=fsdp"))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=user_env())
    assert r.returncode != 0
    assert "[rank 1] error: non-finite loss at step 2 (clip keys on rank 1:" in r.stderr, r.stderr[-3000:]
    assert "[rank 0] error: non-finite loss at step 2 (on another rank)" in r.stderr, r.stderr[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000001"] and not (out / "adapter").exists()
