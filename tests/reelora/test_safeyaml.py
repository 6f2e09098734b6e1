"""Bounded YAML: alias bombs and oversized documents are refused quickly, with short errors naming the file."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from reelora.safeyaml import YAMLLimitError, load_yaml, short_repr

ROOT = Path(__file__).parents[2]


def alias_bomb(levels: int = 9, fan: int = 9, indent: str = "") -> str:
    """`levels` anchors, each a list of `fan` references to the one before: fan**levels values expanded."""
    lines = [f"{indent}l0: &l0 [{', '.join(['x'] * fan)}]"]
    for i in range(1, levels + 1):
        lines.append(f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]")
    return "\n".join(lines) + "\n"


def test_bomb_is_refused_in_linear_time_and_normal_aliases_work():
    t = time.perf_counter()
    with pytest.raises(YAMLLimitError, match=r"doc\.yaml: YAML expands to 4\.41e\+09 values"):
        load_yaml(alias_bomb(), "doc.yaml")
    assert time.perf_counter() - t < 5
    assert load_yaml("a: &x {b: [1, 2]}\nc: *x\n", "ok.yaml") == {"a": {"b": [1, 2]}, "c": {"b": [1, 2]}}
    with pytest.raises(YAMLLimitError):
        load_yaml("[" + ", ".join(["1"] * 101) + "]", "small.yaml", max_values=100)


def test_short_repr_is_bounded_for_any_value():
    huge = [[list(range(1000))] * 1000] * 1000  # shared references: a billion items as a tree
    assert len(short_repr(huge)) < 400
    assert len(short_repr("x" * 10**6)) < 200


def test_train_py_refuses_a_config_alias_bomb_naming_the_file(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("model: tiny-wan\nextra:\n" + alias_bomb(indent="  "))
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(cfg)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0
    assert str(cfg) in r.stderr and "alias bomb" in r.stderr and len(r.stderr) < 2000


def test_override_bomb_and_overflowing_integers_name_the_key():
    from reelora.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="override lora.target_modules"):
        load_config(None, ["lora.target_modules=" + "{" + alias_bomb().replace("\n", ", ").rstrip(", ") + "}"])
    with pytest.raises(ConfigError, match=r"'train.seed': 123456789012345678901 is out of range"):
        load_config(None, ["train.seed=123456789012345678901"])


def test_manifest_alias_bomb_is_refused_naming_the_file(tmp_path):
    from reelora.data.manifest import ManifestError, load_library

    lib = tmp_path / "library.yaml"
    # anchors come before their aliases: the bomb as top-level keys, then a title that refers to it
    lib.write_text(alias_bomb() + 'studio: "S"\ntitles:\n  - id: a\n    path: a.mp4\n    description: *l9\n')
    t = time.perf_counter()
    with pytest.raises(ManifestError, match="alias bomb") as err:
        load_library(lib)
    assert time.perf_counter() - t < 5 and str(lib) in str(err.value) and len(str(err.value)) < 500


def test_manifest_errors_show_a_bounded_value(tmp_path):
    from reelora.data.manifest import ManifestError, load_library

    lib = tmp_path / "library.yaml"
    lib.write_text('studio: "S"\ntitles:\n  - id: a\n    path: a.mp4\n    exclude: [' + ", ".join(["[1, 2, 3]"] * 20000) + "]\n")
    with pytest.raises(ManifestError, match="exclude") as err:
        load_library(lib)
    assert len(str(err.value)) < 500
