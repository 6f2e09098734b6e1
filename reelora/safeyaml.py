"""Bounded YAML reading for every user-supplied document (configs, library manifests).

YAML aliases let a few hundred bytes describe a tree of billions of values ("billion laughs"). PyYAML
builds aliases as shared references, so the danger is whoever walks the result as a tree (a float
fix-up pass, a hash, an error message's `repr`). We count the values the document would have with every
alias expanded, on the composed node graph (memoised, so linear in the file), and refuse documents over
a bound before anything walks them. Files over a size bound are refused unread.
"""
from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 64 * 2**20
"""Largest YAML file we read (a 20,000-title manifest is a few MB)."""
MAX_VALUES = 5_000_000
"""Most values (scalars, lists, mappings) a document may hold with its aliases expanded."""

__all__ = ["YAMLLimitError", "load_yaml", "read_yaml_file", "short_repr", "MAX_BYTES", "MAX_VALUES"]


class YAMLLimitError(ValueError):
    """A document over a size bound; the message names the document."""


def read_yaml_file(path: str | Path, loader: type = yaml.SafeLoader, max_bytes: int = MAX_BYTES,
                   max_values: int = MAX_VALUES) -> Any:
    """Read and parse a YAML file within the bounds.

    Raises:
        OSError: unreadable; YAMLLimitError: over a bound; UnicodeDecodeError; yaml.YAMLError.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise YAMLLimitError(f"{path}: {size} bytes, more than the {max_bytes} a YAML document may have")
    return load_yaml(path.read_bytes().decode("utf-8"), str(path), loader, max_values)


def load_yaml(text: str, where: str, loader: type = yaml.SafeLoader, max_values: int = MAX_VALUES) -> Any:
    """Parse one YAML document, refusing one whose alias-expanded size exceeds `max_values`."""
    if len(text) > MAX_BYTES:
        raise YAMLLimitError(f"{where}: {len(text)} characters, more than the {MAX_BYTES} a YAML document may have")
    parser = loader(text)
    try:
        node = parser.get_single_node()
        if node is None:
            return None
        try:
            count = _expanded_size(node, {})
        except RecursionError:
            raise YAMLLimitError(f"{where}: YAML nested too deeply") from None
        if count > max_values:
            raise YAMLLimitError(f"{where}: YAML expands to {count:.3g} values with its aliases resolved, more "
                                 f"than the {max_values} allowed (an alias bomb?); refusing to read it")
        return parser.construct_document(node)
    finally:
        parser.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a recursive alias (a node containing itself) counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 6, 6, 6
_REPR.maxstring, _REPR.maxother = 120, 120


def short_repr(value: Any) -> str:
    """A bounded `repr` (nesting, items and string length cut), for error messages about user values."""
    return _REPR.repr(value)
