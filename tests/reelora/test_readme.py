"""README stays true: every test it cites as proof exists, and its folder table names real paths."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


def cited_tests() -> list[tuple[str, str | None]]:
    """(file, test name or None) for each `tests/...py[::name]` and each following bare `::name`."""
    out, current = [], None
    for m in re.finditer(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", README):
        path, name = m.group(1), m.group(2)
        if path:
            current = path
        if path or name:
            out.append((current, name))
    return out


def test_every_cited_test_exists():
    cited = cited_tests()
    assert len(cited) > 20
    missing = []
    for path, name in cited:
        f = ROOT / path
        if not f.is_file() or (name and not re.search(rf"^def {name}\(", f.read_text(), re.M)):
            missing.append(f"{path}::{name}" if name else path)
    assert not missing, missing


def test_folder_table_names_real_paths():
    table = README[README.index("| path | import |"): README.index("## Data:")]
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.M)[1:]:
        for path in re.findall(r"`([^`]+)`", cell):
            if "/" in path or path.endswith(".py"):
                candidates = [ROOT / path, ROOT / "reelora" / path]
                assert any(c.exists() for c in candidates), f"README folder table: {path} does not exist"


# ---------------------------------------------------------------------------------------------------------
# Commands a user copies: README code blocks and command spans, the Dockerfile header, config headers.

COMMAND_WORDS = ("python", "bash", "accelerate", "reelora", "docker", "srun", "pip")
# What a command may name from this repository: a path under one of these, or any .py/.sh script. Other paths
# (shards, runs/, outputs/, library.yaml) are the user's own.
REPO_DIRS = ("configs", "scripts", "benchmarks", "tests", "data", "models", "train", "reelora")


def _command_lines(lines: list[str]) -> list[str]:
    """Commands (backslash continuations joined) among `lines`: those starting with a command word."""
    out, current = [], None
    for line in lines:
        text = line.strip()
        if current is not None:
            current += " " + text.rstrip("\\")
        elif text.split(" ", 1)[0] in COMMAND_WORDS:
            current = text.rstrip("\\")
        if current is not None and not text.endswith("\\"):
            out.append(current)
            current = None
    return out


def user_commands() -> list[tuple[str, str]]:
    """(where, command) for every command in README.md, the Dockerfile header and the configs' headers."""
    found = []
    for block in re.findall(r"^```(?:bash|sh)\n(.*?)^```", README, re.S | re.M):
        found += [("README.md", c) for c in _command_lines(block.splitlines())]
    for span in re.findall(r"`([^`\n]+)`", README):
        found += [("README.md", c) for c in _command_lines([span])]
    sources = [ROOT / "Dockerfile", *sorted((ROOT / "configs").rglob("*.yaml"))]
    for path in sources:
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line[1:])
        # commands are indented under their prose (`#   accelerate launch ...`) or quoted in it
        commands = _command_lines([line for line in header if line.startswith("  ")])
        commands += [c for line in header for span in re.findall(r"`([^`]+)`", line) for c in _command_lines([span])]
        found += [(str(path.relative_to(ROOT)), c) for c in commands]
    return found


def _argv(command: str) -> list[list[str]]:
    """shlex words of each simple command in `command` (split at ; && || |), comments dropped."""
    import shlex

    lex = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, "#"
    out = [[]]
    for word in lex:
        if word in (";", "&&", "||", "|", "&"):
            out.append([])
        else:
            out[-1].append(word)
    argvs = [a for a in out if a]
    # `docker run OPTIONS reelora CMD...`: what matters is the command the image runs
    return [a[a.index("reelora", 2) + 1:] if a[:2] == ["docker", "run"] and "reelora" in a[2:] else a for a in argvs]


def _repo_paths(argv: list[str]) -> list[str]:
    paths = []
    for word in argv:
        value = word.split("=", 1)[1] if re.match(r"^[\w.-]+=", word) else word
        value = value.split(":", 1)[0] if not value.startswith("/") else value
        if value.split("/", 1)[0] in REPO_DIRS and "/" in value or re.fullmatch(r"[\w./-]+\.(py|sh)", value):
            paths.append(value.rstrip("/"))
    return paths


def _subcommand_error(argv: list[str]) -> str | None:
    """Walk `reelora SUB [SUB2]` (or `-m reelora.cli SUB`) through the CLI's subparsers; say what is unknown."""
    import argparse

    from reelora.cli import build_parser

    if argv[:1] == ["reelora"]:
        rest = argv[1:]
    elif "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["reelora.cli"]:
        rest = argv[argv.index("-m") + 2:]
    else:
        return None
    parser = build_parser()
    for word in rest:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word.startswith("-"):
            return None
        if word not in subs[0].choices:
            return f"`reelora ... {word}` is not a subcommand (choices: {', '.join(subs[0].choices)})"
        parser = subs[0].choices[word]
    return None


def test_user_commands_are_found():
    where = {w for w, _ in user_commands()}
    assert {"README.md", "Dockerfile", "configs/wan2.1-t2v-1.3b-lora.yaml"} <= where
    dockerfile = [c for w, c in user_commands() if w == "Dockerfile"]
    assert any("train.py" in c for c in dockerfile) and any("reelora cache" in c for c in dockerfile)
    # the checks below would catch the Dockerfile's old `configs/accelerate/multi_gpu.yaml`
    assert _repo_paths(_argv("accelerate launch --config_file configs/accelerate/multi_gpu.yaml train.py")[0]) == [
        "configs/accelerate/multi_gpu.yaml", "train.py"]
    assert _subcommand_error(["reelora", "shards", "bulid"]) and not _subcommand_error(["reelora", "shards", "build", "x"])


def test_every_user_command_names_files_and_subcommands_that_exist():
    missing = []
    for where, command in user_commands():
        for argv in _argv(command):
            missing += [f"{where}: `{command}` names {p}, which does not exist" for p in _repo_paths(argv)
                        if not (ROOT / p).exists()]
            error = _subcommand_error(argv)
            if error:
                missing.append(f"{where}: `{command}`: {error}")
    assert not missing, "\n".join(missing)


def test_every_user_command_with_a_shipped_config_validates():
    """`--config configs/X.yaml key=value ...` as written loads (keys exist, values type-check)."""
    from reelora.train.config import load_config

    checked = 0
    for where, command in user_commands():
        for argv in _argv(command):
            if "--config" not in argv[:-1] or not (ROOT / argv[argv.index("--config") + 1]).is_file():
                continue
            overrides = [w for w in argv if re.match(r"^[a-z_]+(\.[a-z_]+)+=", w)]
            load_config(ROOT / argv[argv.index("--config") + 1], overrides)
            checked += 1
    assert checked >= 5
