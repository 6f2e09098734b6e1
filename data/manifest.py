"""The library manifest (library.yaml): schema, validation and the rights/consent rules.

A studio library is licensed material with conditions attached. This module is the one place that
decides what may be used: a title needs rights that allow training and have not expired, and any
range that is excluded or shows a performer without likeness consent never becomes a clip.

Paths: `path` and `captions` are read wherever the manifest's author put them (relative to the
manifest, absolute, or through `..`: libraries often live on another volume); they are only ever
read, never written or deleted. Title ids become folder names (OUT/work/ID), so they are 1-64
letters, digits, '_' or '-' (TITLE_ID), and every id read back from a file is checked again.

Example::

    studio: "Example Pictures"
    trigger: "exp style"
    titles:
      - id: bbb
        path: media/bigbuckbunny.mp4          # relative to the manifest
        title: "Big Buck Bunny"
        description: "animated short, green meadow, soft daylight"
        rights: {holder: "Blender Foundation", license: "CC-BY-3.0", training_allowed: true,
                 expires: 2030-01-01}
        performers:
          - {name: "Narrator", consent: false, appears: [[1.0, 2.5]]}
        exclude: [[60.0, 75.0]]
        captions: media/bbb.captions.jsonl
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from reelora.safeyaml import MAX_BYTES, YAMLLimitError, load_yaml, short_repr
from reelora.files import sha256_bytes

TITLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_LINE = "__line__"


class ManifestError(ValueError):
    """The library manifest is invalid; the message names the file, line and title."""


@dataclass(frozen=True)
class Range:
    """A half-open time range [start, end) in seconds, with why it matters."""

    start: float
    end: float
    reason: str = ""

    def overlaps(self, start: float, end: float) -> bool:
        return self.start < end and start < self.end


@dataclass(frozen=True)
class Rights:
    """Licence terms for one title."""

    holder: str
    """Who owns the material and gets paid (lineage)."""
    license: str
    """Licence name or contract id, e.g. "CC-BY-3.0"."""
    training_allowed: bool
    """Whether the licence covers training a model."""
    expires: dt.date | None = None
    """Last day the licence is valid; None = no expiry."""


@dataclass(frozen=True)
class Performer:
    """A performer whose likeness appears in a title (California AB 2602 / AB 1836)."""

    name: str
    consent: bool
    """Whether the performer consented to their likeness being used for training."""
    appears: tuple[tuple[float, float], ...] = ()
    """Time ranges (seconds) where the performer is on screen."""


@dataclass(frozen=True)
class Title:
    """One film/episode of the library."""

    id: str
    path: Path
    """Absolute path to the media file (the manifest holds it relative to itself)."""
    title: str = ""
    description: str = ""
    rights: Rights | None = None
    performers: tuple[Performer, ...] = ()
    exclude: tuple[tuple[float, float], ...] = ()
    captions: Path | None = None
    """Optional JSONL sidecar: {"start": s, "end": s, "caption": "..."} per line."""
    line: int = 0
    """Line of the manifest where this title starts (for error messages)."""
    entry_sha256: str = ""
    """Hash of the title's manifest entry: a change to it invalidates finished work."""

    def where(self) -> str:
        return f"line {self.line}, title {self.id!r}"


@dataclass(frozen=True)
class Library:
    path: Path
    studio: str
    titles: tuple[Title, ...]
    trigger: str = ""
    sha256: str = ""
    """sha256 of the manifest file's bytes (recorded in index.json)."""

    def title(self, title_id: str) -> Title:
        for t in self.titles:
            if t.id == title_id:
                return t
        raise KeyError(f"{self.path}: no title with id {short_repr(title_id)}")


# --------------------------------------------------------------------------- loading


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line each mapping starts on, for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_library(path: str | Path) -> Library:
    """Parse and validate a library manifest.

    Raises:
        ManifestError: naming the file, line and title id of the first problem found.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ManifestError(f"{path}: {path.stat().st_size} bytes, more than the {MAX_BYTES} a manifest may have")
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read library manifest: {exc.strerror or exc}") from exc
    try:
        doc = load_yaml(raw_bytes.decode("utf-8"), str(path), _LineLoader)
    except YAMLLimitError as exc:
        raise ManifestError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not valid UTF-8 ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a mapping with 'studio' and 'titles' at the top")
    where = f"{path}"
    _check_keys(doc, {"studio", "trigger", "titles"}, where)
    studio = _string(doc, "studio", where, required=True)
    trigger = _string(doc, "trigger", where)
    entries = doc.get("titles")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"{path}: 'titles' must be a non-empty list")

    titles: list[Title] = []
    seen: dict[str, int] = {}
    for entry in entries:
        title = _parse_title(entry, path)
        if title.id in seen:
            raise ManifestError(
                f"{path}:{title.line}: duplicate title id {short_repr(title.id)} (first at line {seen[title.id]})"
            )
        seen[title.id] = title.line
        titles.append(title)
    return Library(
        path=path.resolve(),
        studio=studio,
        trigger=trigger,
        titles=tuple(titles),
        sha256=sha256_bytes(raw_bytes),
    )


def _parse_title(entry: Any, manifest: Path) -> Title:
    if not isinstance(entry, dict):
        raise ManifestError(f"{manifest}: every entry of 'titles' must be a mapping, got {short_repr(entry)}")
    line = entry.get(_LINE, 0)
    tid = entry.get("id")
    if not isinstance(tid, str) or not TITLE_ID.match(tid):
        raise ManifestError(
            f"{manifest}:{line}: title id {short_repr(tid)} must be 1-64 letters, digits, '_' or '-'"
        )
    where = f"{manifest}:{line}: title {short_repr(tid)}"
    _check_keys(
        entry,
        {"id", "path", "title", "description", "rights", "performers", "exclude", "captions"},
        where,
    )
    media = _string(entry, "path", where, required=True)
    rights = _parse_rights(entry.get("rights"), where) if "rights" in entry else None
    performers = entry.get("performers") or []
    if not isinstance(performers, list):
        raise ManifestError(f"{where}: 'performers' must be a list")
    captions = _string(entry, "captions", where)
    clean = {k: v for k, v in entry.items() if k != _LINE}
    return Title(
        id=tid,
        path=(manifest.parent / media).resolve(),
        title=_string(entry, "title", where),
        description=_string(entry, "description", where),
        rights=rights,
        performers=tuple(_parse_performer(p, where) for p in performers),
        exclude=_ranges(entry.get("exclude") or [], f"{where}: exclude"),
        captions=(manifest.parent / captions).resolve() if captions else None,
        line=line,
        entry_sha256=sha256_bytes(json.dumps(_strip_lines(clean), sort_keys=True, default=str).encode()),
    )


def _parse_rights(raw: Any, where: str) -> Rights | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: 'rights' must be a mapping")
    where = f"{where}: rights"
    _check_keys(raw, {"holder", "license", "training_allowed", "expires"}, where)
    allowed = raw.get("training_allowed")
    if not isinstance(allowed, bool):
        raise ManifestError(f"{where}.training_allowed must be true or false, got {short_repr(allowed)}")
    expires = raw.get("expires")
    if isinstance(expires, str):
        try:
            expires = dt.date.fromisoformat(expires)
        except ValueError as exc:
            raise ManifestError(f"{where}.expires {short_repr(expires)} is not a YYYY-MM-DD date") from exc
    if isinstance(expires, dt.datetime):
        expires = expires.date()
    if expires is not None and not isinstance(expires, dt.date):
        raise ManifestError(f"{where}.expires must be a YYYY-MM-DD date, got {short_repr(expires)}")
    return Rights(
        holder=_string(raw, "holder", where, required=True),
        license=_string(raw, "license", where, required=True),
        training_allowed=allowed,
        expires=expires,
    )


def _parse_performer(raw: Any, where: str) -> Performer:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: each performer must be a mapping, got {short_repr(raw)}")
    name = _string(raw, "name", f"{where}: performer", required=True)
    pwhere = f"{where}: performer {short_repr(name)}"
    _check_keys(raw, {"name", "consent", "appears"}, pwhere)
    consent = raw.get("consent")
    if not isinstance(consent, bool):
        raise ManifestError(f"{pwhere}: 'consent' must be true or false, got {short_repr(consent)}")
    return Performer(name=name, consent=consent, appears=_ranges(raw.get("appears") or [], f"{pwhere}: appears"))


def _ranges(raw: Any, where: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list):
        raise ManifestError(f"{where} must be a list of [start, end] seconds")
    out = []
    for item in raw:
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in item)
        )
        if not ok or not 0 <= item[0] < item[1]:
            raise ManifestError(f"{where}: {short_repr(item)} is not a [start, end] range with 0 <= start < end")
        out.append((float(item[0]), float(item[1])))
    return tuple(out)


def _string(raw: dict, key: str, where: str, required: bool = False) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{where}: missing required key {short_repr(key)}")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ManifestError(f"{where}: {short_repr(key)} must be a non-empty string, got {short_repr(value)}")
    return value


def _check_keys(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(k for k in raw if k != _LINE and k not in allowed)
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _strip_lines(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_lines(v) for k, v in obj.items() if k != _LINE}
    if isinstance(obj, list):
        return [_strip_lines(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- rights rules


def title_exclusion(title: Title, as_of: dt.date) -> str | None:
    """Why a whole title contributes nothing, or None when it may be used."""
    if title.rights is None:
        return "no rights recorded"
    if not title.rights.training_allowed:
        return f"licence {title.rights.license!r} does not allow training"
    if title.rights.expires is not None and title.rights.expires < as_of:
        return f"licence expired on {title.rights.expires.isoformat()} (as of {as_of.isoformat()})"
    return None


def forbidden_ranges(title: Title) -> list[Range]:
    """Every time range of a title that must never reach a shard, sorted by start."""
    ranges = [Range(a, b, "excluded range") for a, b in title.exclude]
    for p in title.performers:
        if not p.consent:
            ranges += [Range(a, b, f"performer {p.name!r} without likeness consent") for a, b in p.appears]
    return sorted(ranges, key=lambda r: (r.start, r.end, r.reason))


def rights_record(title: Title) -> dict:
    """The rights fields written into every clip's metadata and the audit."""
    r = title.rights
    if r is None:
        return {"license": None, "rights_holder": None, "rights_expires": None}
    return {
        "license": r.license,
        "rights_holder": r.holder,
        "rights_expires": r.expires.isoformat() if r.expires else None,
    }


def describe(title: Title) -> dict:
    """A JSON-friendly view of a title (audit)."""
    d = asdict(title)
    d["path"] = str(title.path)
    d["captions"] = str(title.captions) if title.captions else None
    if title.rights and title.rights.expires:
        d["rights"]["expires"] = title.rights.expires.isoformat()
    return d


__all__ = [
    "Library",
    "ManifestError",
    "Performer",
    "Range",
    "Rights",
    "Title",
    "forbidden_ranges",
    "load_library",
    "rights_record",
    "title_exclusion",
]
