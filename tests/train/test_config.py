"""Config: every shipped YAML validates; unknown keys and bad values fail naming the key, before any model loads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reelora.train.config import Config, ConfigError, iter_options, load_config

ROOT = Path(__file__).parents[2]
CONFIGS = ROOT / "configs"


def training_configs() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if "accelerate" not in p.relative_to(CONFIGS).parts)


def accelerate_configs() -> list[Path]:
    return sorted((CONFIGS / "accelerate").rglob("*.yaml"))


@pytest.mark.parametrize("path", training_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_training_yaml_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.model


@pytest.mark.parametrize("path", accelerate_configs(), ids=lambda p: p.name)
def test_accelerate_yamls_are_valid_accelerate_configs(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))  # raises on unknown keys
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    raw = yaml.safe_load(path.read_text())
    # accelerate only starts processes; FSDP is train.parallel (accelerate's FSDP/DeepSpeed plugins would double-wrap)
    assert raw["distributed_type"] in {"NO", "MULTI_GPU"}


def test_required_configs_exist():
    names = {p.name for p in training_configs()}
    assert {"tiny-wan.yaml", "wan2.1-t2v-1.3b-lora.yaml"} <= names
    accel = {p.name for p in accelerate_configs()}
    assert {"single-gpu.yaml", "multi-gpu-ddp.yaml", "fsdp.yaml"} <= accel


def test_overrides_are_typed_and_nested():
    cfg = load_config(CONFIGS / "tiny-wan.yaml", ["lora.rank=8", "train.max_steps=10", "optim.lr=3e-4",
                                                   "lora.target_modules=[to_q, to_v]", "train.resume=latest",
                                                   "train.max_grad_norm=null", "data.cache=/x"])
    assert cfg.lora.rank == 8 and cfg.train.max_steps == 10 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.lora.target_modules == ["to_q", "to_v"] and cfg.train.resume == "latest"
    assert cfg.train.max_grad_norm is None and cfg.data.cache == "/x"
    assert load_config(None, ["lora.target_modules=blocks\\.0\\..*"]).lora.target_modules == "blocks\\.0\\..*"


@pytest.mark.parametrize("override, key", [
    ("bogus.key=1", "bogus"),
    ("lora.bogus=1", "lora.bogus"),
    ("train.max_step=3", "train.max_step"),
])
def test_unknown_keys_name_the_key_and_list_valid_ones(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny-wan.yaml", [override])
    msg = str(err.value)
    assert repr(key) in msg and "valid keys" in msg
    if key.startswith("train."):
        assert "max_steps" in msg


@pytest.mark.parametrize("override, key", [
    ("lora.rank=0", "lora.rank"), ("lora.rank=abc", "lora.rank"), ("lora.dropout=1.5", "lora.dropout"),
    ("optim.lr=-1", "optim.lr"), ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("train.timestep_sampling=beta", "train.timestep_sampling"), ("train.batch_size=1.5", "train.batch_size"),
    ("train.gradient_checkpointing=maybe", "train.gradient_checkpointing"), ("lora.init=pissa", "lora.init"),
    ("lora.target_modules=[unclosed(", "lora.target_modules"), ("validation.quantiles=[0.5, 1.0]", "validation.quantiles"),
    ("data.caption_dropout=2", "data.caption_dropout"), ("model=null", "model"), ("train.keep_last=0", "train.keep_last"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny-wan.yaml", [override])
    assert repr(key) in str(err.value) or f"'{key}" in str(err.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: tiny-wan\nlora:\n  rnak: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*'lora\.rnak'.*valid keys in lora: rank"):
        load_config(p)


def test_every_option_has_a_docstring():
    opts = list(iter_options())
    assert len(opts) > 40
    missing = [k for k, _, _, doc in opts if not doc]
    assert not missing, f"options without a docstring: {missing}"
    keys = {k for k, *_ in opts}
    for required in ["model", "data.shards", "data.cache", "lora.rank", "lora.alpha", "lora.dropout", "lora.target_modules",
                     "lora.init", "optim.lr", "optim.weight_decay", "optim.warmup_steps", "optim.schedule",
                     "train.max_steps", "train.batch_size", "train.grad_accum", "train.max_grad_norm",
                     "train.mixed_precision", "train.gradient_checkpointing", "train.seed", "train.checkpoint_every",
                     "train.keep_last", "train.output_dir", "train.resume", "data.caption_dropout",
                     "train.timestep_sampling", "train.flow_shift", "validation.every", "log.wandb_project"]:
        assert required in keys


def _train_py(*args, timeout=60):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_train_py_rejects_bogus_key_before_loading_anything():
    r = _train_py("--config", "configs/tiny-wan.yaml", "bogus.key=1")
    assert r.returncode == 2
    assert "'bogus'" in r.stderr and "valid keys" in r.stderr and "Traceback" not in r.stderr


def test_train_py_help_lists_options_with_docstrings():
    r = _train_py("--help")
    assert r.returncode == 0
    for key, _, _, doc in iter_options():
        assert key in r.stdout
    assert "LoRA rank r" in r.stdout and "train.resume" in r.stdout


def test_null_flow_shift_takes_the_family_shift():
    from reelora.models.registry import resolve
    from reelora.train.loop import with_family_defaults

    cfg = load_config(ROOT / "configs" / "tiny-wan.yaml")
    assert cfg.train.flow_shift is None
    assert with_family_defaults(cfg).train.flow_shift == resolve("tiny-wan").flow_shift == 3.0
    pinned = load_config(ROOT / "configs" / "tiny-wan.yaml", ["train.flow_shift=2.0"])
    assert with_family_defaults(pinned).train.flow_shift == 2.0


def test_an_unquoted_no_is_the_choice_no():
    """YAML reads `no` as false: `train.mixed_precision=no` means the choice "no" where a key offers it."""
    cfg = load_config(ROOT / "configs" / "tiny-wan.yaml", ["train.mixed_precision=no", "train.compile_blocks=no"])
    assert cfg.train.mixed_precision == "no" and cfg.train.compile_blocks == "no"
    with pytest.raises(ConfigError, match="train.parallel"):  # a key without a "no" choice still refuses false
        load_config(ROOT / "configs" / "tiny-wan.yaml", ["train.parallel=no"])
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config(ROOT / "configs" / "tiny-wan.yaml", ["train.mixed_precision=yes"])
