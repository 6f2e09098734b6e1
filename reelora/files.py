"""File helpers every package shares: content hashes and atomic writes.

An atomic write goes to a temporary name in the destination's folder and is renamed over the target
(`os.replace`), so a reader sees the old file or the new one, never a torn one, and a crash leaves at
most a `.tmp` file behind. Out-of-space is re-raised as `OSError` naming the file it was writing.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["sha256_file", "sha256_bytes", "json_bytes", "write_bytes_atomic", "write_text_atomic",
           "write_json_atomic", "save_safetensors_atomic", "atomic_write"]


def sha256_file(path: str | Path, progress: Callable[[], None] | None = None) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks; `progress()` is called after each block
    (a staging worker's heartbeat: hashing a feature film on shared storage takes minutes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            if progress is not None:
                progress()
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, UTF-8, no spaces): the form hashes are taken of."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it over `path`.

    Raises:
        OSError: naming `path`; ENOSPC says the disk is full. The temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _out_of_space(exc):
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path}") from exc
        raise
    return path


def _out_of_space(exc: BaseException) -> bool:
    # safetensors raises its own SafetensorError ("... os error 28") rather than OSError on a failed write
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return type(exc).__name__ == "SafetensorError" and f"os error {errno.ENOSPC}" in str(exc)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Pretty, key-sorted JSON (one-space indent, trailing newline), written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def save_safetensors_atomic(tensors: dict, path: str | Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
