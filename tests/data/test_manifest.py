"""Library manifest validation and the rights/consent rules."""
from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from reelora.data.manifest import ManifestError, forbidden_ranges, load_library, title_exclusion

GOOD = """\
studio: "Example Pictures"
trigger: "exp style"
titles:
  - id: bbb
    path: media/bigbuckbunny.mp4
    title: "Big Buck Bunny"
    description: "animated short"
    rights: {holder: "Blender Foundation", license: "CC-BY-3.0", training_allowed: true, expires: 2030-01-01}
    performers:
      - {name: "Narrator", consent: false, appears: [[1.0, 2.5]]}
      - {name: "Lead", consent: true, appears: [[0.0, 9.0]]}
    exclude: [[60.0, 75.0]]
    captions: media/bbb.captions.jsonl
  - id: other
    path: other.mkv
"""


def write(tmp_path, text):
    p = tmp_path / "library.yaml"
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def test_parses_the_documented_example(tmp_path):
    lib = load_library(write(tmp_path, GOOD))
    bbb = lib.title("bbb")
    assert lib.studio == "Example Pictures" and lib.trigger == "exp style"
    assert bbb.path == (tmp_path / "media/bigbuckbunny.mp4").resolve()
    assert bbb.rights.expires == dt.date(2030, 1, 1) and bbb.rights.training_allowed
    assert bbb.captions == (tmp_path / "media/bbb.captions.jsonl").resolve()
    assert bbb.line == 4 and lib.title("other").line == 14
    assert len(lib.sha256) == 64


def test_rights_rules(tmp_path):
    lib = load_library(write(tmp_path, GOOD))
    bbb, other = lib.title("bbb"), lib.title("other")
    assert title_exclusion(bbb, dt.date(2029, 12, 31)) is None
    assert title_exclusion(bbb, dt.date(2030, 1, 1)) is None  # the expiry day itself is still valid
    assert "expired on 2030-01-01" in title_exclusion(bbb, dt.date(2030, 1, 2))
    assert title_exclusion(other, dt.date(2026, 1, 1)) == "no rights recorded"
    ranges = forbidden_ranges(bbb)
    assert [(r.start, r.end) for r in ranges] == [(1.0, 2.5), (60.0, 75.0)]
    assert "Narrator" in ranges[0].reason and ranges[1].reason == "excluded range"
    assert ranges[0].overlaps(2.4, 3.0) and not ranges[0].overlaps(2.5, 3.0)


@pytest.mark.parametrize(
    "bad,message",
    [
        ("  - id: x\n    path: a.mp4\n  - id: x\n    path: b.mp4\n", "library.yaml:5: duplicate title id 'x' (first at line 3)"),
        ("  - id: 'bad id'\n    path: a.mp4\n", "library.yaml:3: title id 'bad id'"),
        ("  - id: x\n", "library.yaml:3: title 'x': missing required key 'path'"),
        ("  - id: x\n    path: a.mp4\n    rights: {holder: H, license: L, training_allowed: yes please}\n",
         "title 'x': rights.training_allowed must be true or false"),
        ("  - id: x\n    path: a.mp4\n    rights: {holder: H, license: L, training_allowed: true, expires: soon}\n",
         "rights.expires 'soon' is not a YYYY-MM-DD date"),
        ("  - id: x\n    path: a.mp4\n    exclude: [[5, 2]]\n", "title 'x': exclude: [5, 2] is not a [start, end] range"),
        ("  - id: x\n    path: a.mp4\n    performers: [{name: P, appears: [[0, 1]]}]\n",
         "performer 'P': 'consent' must be true or false"),
        ("  - id: x\n    path: a.mp4\n    licence: oops\n", "title 'x': unknown key(s) ['licence']"),
    ],
)
def test_errors_name_the_line_and_title(tmp_path, bad, message):
    path = write(tmp_path, "studio: S\ntitles:\n" + bad)
    with pytest.raises(ManifestError) as info:
        load_library(path)
    text = str(info.value)
    assert text.startswith(f"{path}:")  # the file, then the line of the offending title
    assert message in text


def test_top_level_errors(tmp_path):
    with pytest.raises(ManifestError, match="cannot read"):
        load_library(tmp_path / "nope.yaml")
    with pytest.raises(ManifestError, match="invalid YAML"):
        load_library(write(tmp_path, "studio: [unclosed\n"))
    with pytest.raises(ManifestError, match="'titles' must be a non-empty list"):
        load_library(write(tmp_path, "studio: S\ntitles: []\n"))
    with pytest.raises(ManifestError, match="missing required key 'studio'"):
        load_library(write(tmp_path, "titles: [{id: a, path: a.mp4}]\n"))


def test_a_changed_entry_changes_its_hash(tmp_path):
    a = load_library(write(tmp_path, GOOD)).title("bbb").entry_sha256
    b = load_library(write(tmp_path, GOOD.replace("[[60.0, 75.0]]", "[[60.0, 76.0]]"))).title("bbb").entry_sha256
    c = load_library(write(tmp_path, "# a comment moves every line\n" + GOOD)).title("bbb").entry_sha256
    assert a != b and a == c
