"""benchmarks/wan_realsize.py: the FLOP counter against a hand count and torch's own counter, the variant
matrix (OOM and config errors recorded, the other variants still measured), and the CPU command on the
published 1.3B architecture (slow)."""
from __future__ import annotations

import gc
import json
import runpy
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "wan_realsize.py"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


@pytest.fixture(scope="module")
def bench():
    return runpy.run_path(str(SCRIPT))


def tiny_lora_transformer(rank: int):
    from diffusers import WanTransformer3DModel

    from reelora.models.lora import attach_lora
    from reelora.models.wan import TINY_TRANSFORMER

    torch.manual_seed(0)
    t = WanTransformer3DModel(**TINY_TRANSFORMER)
    attach_lora(t, rank=rank, alpha=rank, target_modules=TARGETS)
    layers = [(n, m.in_features, m.out_features) for n, m in t.named_modules() if hasattr(m, "lora_A")]
    return t, layers


def test_flop_counter_on_tiny_wan_matches_a_hand_count_and_torch(bench):
    """tiny-wan: d = 2 heads x 16 = 32, ffn 64, 2 layers, text_dim 32, freq_dim 32, 16 channels, patch 1x2x2 (p = 4).
    Latents 2x4x4 -> S = 2*2*2 = 8 tokens; T = 12 text tokens (not S, so the text-side terms are told apart); rank 4."""
    t, layers = tiny_lora_transformer(rank=4)
    assert len(layers) == 2 * 10  # per block: attn1 q/k/v/o, attn2 q/k/v/o, ffn in/out
    parts = bench["wan_forward_flops"](dict(t.config), (2, 4, 4), text_len=12, lora_layers=layers, rank=4)
    hand = {
        "patch_embed": 2 * 8 * (16 * 4) * 32,                    # 32768
        "time_embed": 2 * (32 * 32 + 32 * 32 + 32 * 6 * 32),     # 16384
        "text_embed": 2 * 12 * (32 * 32 + 32 * 32),              # 49152
        "self_attn_proj": 2 * 8 * 8 * 32 * 32,                   # 131072: L x 4 projections x 2 S d^2
        "self_attn_core": 2 * 4 * 8 * 8 * 32,                    # 16384: L x (QK^T + PV), 2 S^2 d each
        "cross_attn_proj_video": 2 * 4 * 8 * 32 * 32,            # 65536: L x (Q, O) over S
        "cross_attn_proj_text": 2 * 4 * 12 * 32 * 32,            # 98304: L x (K, V) over T
        "cross_attn_core": 2 * 4 * 8 * 12 * 32,                  # 24576
        "ffn": 2 * 4 * 8 * 32 * 64,                              # 131072
        "proj_out": 2 * 8 * 32 * (16 * 4),                       # 32768
        # per block: 6 video-side d->d LoRAs 2*8*4*(32+32) = 4096 each, attn2 k/v over T 2*12*4*64 = 6144 each,
        # ffn in/out 2*8*4*(32+64) = 6144 each: 24576 + 12288 + 12288 = 49152; x 2 blocks
        "lora": 2 * (6 * 4096 + 2 * 6144 + 2 * 6144),            # 98304
    }
    assert parts == hand
    assert sum(hand.values()) == 696320

    steps = bench["step_flops"](dict(t.config), parts, (2, 4, 4), 1, layers, 4, 12)
    # backward: video-side projections (self minus block 0's Q/K/V: 131072 - 6*8*32*32), cross Q/O, FFN, output
    # projection once; attention cores twice; LoRA twice, less A's input gradient of block 0's attn1 q/k/v
    # (3 x 2*8*32*4) and of every attn2 k/v over text (2 x 2 x 2*12*32*4)
    backward = (131072 - 49152) + 65536 + 131072 + 32768 + 2 * (16384 + 24576) + 2 * 98304 - (3 * 2048 + 4 * 3072)
    assert steps == {"forward": 696320, "model": 3 * 696320, "lora": 696320 + backward}

    # torch counts the same matmuls (SDPA's math backend, which its counter sees as bmm) for a LoRA step
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = t(hidden_states=torch.randn(1, 16, 2, 4, 4), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 12, 32), return_dict=False)[0]
        forward_counted = counter.get_total_flops()
        out.float().pow(2).mean().backward()
    assert forward_counted == steps["forward"]
    assert counter.get_total_flops() == steps["lora"]


def test_published_1_3b_flops_at_480p(bench):
    """The figures MFU is computed from at 81x480x832 (21x60x104 latents -> 32,760 tokens), rank 32."""
    from reelora.models.wan import PUBLISHED_TRANSFORMER

    cfg = PUBLISHED_TRANSFORMER["1.3b"]
    d, s, t = 1536, 21 * 30 * 52, 512
    parts = bench["wan_forward_flops"](cfg, (21, 60, 104))
    assert parts["self_attn_core"] == 30 * 4 * s * s * d
    assert parts["ffn"] == 30 * 4 * s * d * 8960
    assert parts["cross_attn_proj_text"] == 30 * 4 * t * d * d
    assert 2.8e14 < sum(parts.values()) < 2.9e14  # ~0.28 PFLOP per forward, 70% of it self-attention scores+values


def test_parse_variant(bench):
    parse = bench["parse_variant"]
    assert parse("fp8:train.fp8_base=true") == ("fp8", ["train.fp8_base=true"])
    assert parse("x:lora.rank=8, lora.target_modules=[to_q, to_k],train.batch_size=2") == \
        ("x", ["lora.rank=8", "lora.target_modules=[to_q, to_k]", "train.batch_size=2"])
    assert parse("plain:") == ("plain", [])
    for bad in ("no-colon", ":lora.rank=8", "x:lora.rank"):
        with pytest.raises(ValueError):
            parse(bad)


def test_matrix_records_oom_and_bad_configs_and_measures_the_rest(bench, tmp_path, monkeypatch):
    """The GPU matrix on CPU with a tiny transformer in place of 1.3B: the variant that 'runs out of memory'
    (without checkpointing here) and the one with an unknown key are recorded, the others measured."""
    import reelora.train.step as step_mod
    from reelora.models import wan

    tiny = dict(wan.TINY_TRANSFORMER, image_dim=None, added_kv_proj_dim=None, eps=1e-6)
    monkeypatch.setitem(wan.PUBLISHED_TRANSFORMER, "1.3b", tiny)
    real_step = step_mod.train_step

    def step_or_oom(ctx, batches, step):
        if not ctx.cfg.train.gradient_checkpointing:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_step(ctx, batches, step)

    monkeypatch.setattr(step_mod, "train_step", step_or_oom)
    built, alive_at_build = [], []
    real_build = wan.published_transformer

    def build_noting_survivors(*args, **kwargs):  # memory is freed between variants: no earlier model survives
        gc.collect()
        alive_at_build.append(sum(ref() is not None for ref in built))
        t = real_build(*args, **kwargs)
        built.append(weakref.ref(t))
        return t

    monkeypatch.setattr(wan, "published_transformer", build_noting_survivors)
    out = tmp_path / "r.json"
    result = bench["main"](["--device", "cpu", "--frames", "5", "--height", "32", "--width", "32", "--steps", "1",
                            "--sample-steps", "1", "--rank", "4", "--both-checkpointing", "--variant", "typo:train.no_such_key=1",
                            "--variant", "r8:lora.rank=8,warmup=0,sample=false", "--json", str(out), "--workdir", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    v = {r["name"]: r for r in result["variants"]}
    assert list(v) == ["checkpointing", "no_checkpointing", "typo", "r8"]
    assert alive_at_build == [0, 0, 0]  # 'typo' builds nothing
    assert v["no_checkpointing"]["oom"] is True and v["no_checkpointing"]["phase"] == "train"
    assert "step_s" not in v["no_checkpointing"] and v["no_checkpointing"]["lora_layers"] == 20
    assert v["typo"]["oom"] is False and "train.no_such_key" in v["typo"]["error"]
    for name, rank in (("checkpointing", 4), ("r8", 8)):
        r = v[name]
        assert r["phase"] == "done" and "error" not in r
        assert r["config"]["lora"]["rank"] == rank
        assert r["lora_params"] == 2 * rank * (6 * 64 + 2 * 64 + 2 * 96)  # per block: 8 d->d + ffn in/out
        assert r["step_s"] > 0 and len(r["step_times_s"]) == 1 and len(r["losses"]) == {4: 2, 8: 1}[rank]
        assert r["adapter_bytes"] == r["adapter_files"]["pytorch_lora_weights.safetensors"] > 4 * r["lora_params"]
    assert v["checkpointing"]["config"]["train"]["gradient_checkpointing"] is True
    assert set(v["checkpointing"]["sample_step_s"]) == {"base", "unfused", "fused"}
    assert "sample_step_s" not in v["r8"]  # sample=false
    assert result["summary_variant"] == "checkpointing" and result["step_s"] == v["checkpointing"]["step_s"]
    assert result["tokens"] == 2 * 2 * 2  # 5x32x32 -> latents 2x4x4 -> patches 2x2x2
    assert result["mfu"] is None  # no FLOP/s peak on a CPU


FORBIDDEN = ("av", "decord", "webdataset")  # not installed on the GPU machine


@pytest.mark.slow
def test_cpu_command_on_the_published_1_3b(tmp_path):
    """The documented CPU command, as a subprocess, on the real 1.3B architecture (~1-3 min, ~5 GB RSS):
    counts of the published config, every figure present, nothing that decodes video imported."""
    out = tmp_path / "out.json"
    argv = [str(SCRIPT), "--device", "cpu", "--frames", "5", "--height", "64", "--width", "64", "--steps", "1", "--warmup", "0",
            "--sample-steps", "1", "--json", str(out)]
    wrapper = ("import json, runpy, sys; sys.argv = json.loads(sys.argv[1]); runpy.run_path(sys.argv[0], run_name='__main__'); "
               f"print('IMPORTED', json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))")
    proc = subprocess.run([sys.executable, "-c", wrapper, json.dumps(argv)], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "IMPORTED []"
    r = json.loads(out.read_text())
    assert r["params"] == 1_418_996_800 and abs(r["params"] / 1.42e9 - 1) < 0.01
    assert r["lora_layers"] == 300
    assert r["lora_params"] == 30 * (8 * 32 * (1536 + 1536) + 2 * 32 * (1536 + 8960)) == 43_745_280
    assert r["tokens"] == 2 * 4 * 4 and r["latent_shape"] == [16, 2, 8, 8]  # 5 frames -> 2, 64 px -> 8 -> 4 patches
    assert 4 * r["lora_params"] < r["adapter_bytes"] < 4 * r["lora_params"] + 2**20  # fp32 tensors + header
    assert r["step_s"] > 0 and r["peak_mem_gb"] > 2.8  # at least the bf16 base weights
    assert all(r["sample_step_s"][k] > 0 for k in ("base", "unfused", "fused"))
    assert r["mfu"] is None and r["variants"][0]["oom"] is False
