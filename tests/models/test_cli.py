"""The `reelora` front door and `reelora models show`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reelora.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,family,pipeline", [("tiny-wan", "wan", "WanPipeline"), ("tiny-ltx", "ltx", "LTXPipeline")])
def test_models_show_json(name, family, pipeline, capsys):
    assert main(["models", "show", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == family and info["pipeline"] == pipeline
    assert set(info["components"]) == {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert info["components"]["transformer"]["parameters"] > 10_000
    # the default LoRA targets must actually hit modules of the backbone
    assert info["lora_target_modules"] >= 8


def test_models_show_text(capsys):
    assert main(["models", "show", "tiny-wan"]) == 0
    out = capsys.readouterr().out
    assert "family=wan" in out and "WanTransformer3DModel" in out and "to_q" in out


def test_console_script_help_offline():
    exe = Path(sys.executable).with_name("reelora")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, check=True).stdout
    assert "models" in out
    bad = subprocess.run([str(exe), "models", "show", "tiny-nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "tiny-nope" in bad.stderr and "Traceback" not in bad.stderr


def test_group_without_subcommand_prints_help(capsys):
    assert main(["models"]) == 2
    assert "show" in capsys.readouterr().out


def test_only_the_reelora_namespace_is_installed(tmp_path):
    # Run from an empty dir so the repo root is not on sys.path: `data`/`models` must not be importable.
    code = (
        "import importlib.util as u, reelora.data, reelora.models, reelora.train;"
        "print(u.find_spec('data') is None, u.find_spec('models') is None, u.find_spec('train') is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_notebook_api_is_reexported():
    import reelora.models as m
    from reelora.models.sample import Sampler, sample_clips

    assert m.Sampler is Sampler and m.sample_clips is sample_clips
    assert callable(m.load_model)
    with pytest.raises(AttributeError, match="nope"):
        m.nope


@pytest.mark.parametrize("flag,value", [("--steps", "1000000000"), ("--seed", "12345678901234567890"),
                                        ("--num-frames", "0"), ("--height", "100000"), ("--guidance", "nan")])
def test_sample_cli_rejects_out_of_range_numbers_naming_the_flag(flag, value, capsys):
    # argparse rejects the value: nothing is loaded (the model name does not even exist).
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--model", "tiny-nope", "--prompt", "x", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "must be" in err and "Traceback" not in err


def test_sample_cli_help_comes_from_the_settings_docstrings(capsys):
    from dataclasses import fields

    from reelora.models.settings import SampleSettings
    from reelora.train.config import field_docs

    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in fields(SampleSettings):
        assert "--" + f.name.replace("_", "-") in out
        assert field_docs(SampleSettings)[f.name].split("(")[0].strip() in out
