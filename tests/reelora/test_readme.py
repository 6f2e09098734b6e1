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
