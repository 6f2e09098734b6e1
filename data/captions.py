"""Captions for clips: sidecar file, else a vision-language model (optional), else a template.

Every caption goes through `clean_caption` (valid UTF-8, one line, collapsed whitespace, length
cap on a word boundary) before it reaches a shard.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_caption(text: str, max_chars: int = 300) -> str:
    """Normalise a caption: NFC, no control characters, single spaces, at most `max_chars`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = unicodedata.normalize("NFC", text)
    # lone surrogates can't be encoded as UTF-8: replace them rather than fail at write time
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    text = _CONTROL.sub(" ", text)
    text = " ".join(text.split())
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        text = (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:-")
    return text


MAX_SIDECAR_BYTES = 16 * 2**20
"""Largest caption sidecar read (a feature film captioned every 2 s takes about 1 MB)."""
MAX_SIDECAR_LINES = 200_000
MAX_LINE_CHARS = 64 * 1024
"""Longer sidecar lines are skipped with a warning (captions are cut to --caption-max-chars anyway)."""


class SidecarError(ValueError):
    """A caption sidecar over a bound or not a regular file: the title is quarantined with this reason."""


@dataclass(frozen=True)
class SidecarEntry:
    start: float
    end: float
    caption: str


def load_sidecar(path: Path) -> tuple[list[SidecarEntry], list[str]]:
    """Read a JSONL caption sidecar; bad lines (and lines over MAX_LINE_CHARS) are skipped and reported.

    Returns:
        (entries sorted by start, problems as "FILE:LINE: reason" strings)
    Raises:
        SidecarError: not a regular file, over MAX_SIDECAR_BYTES, or over MAX_SIDECAR_LINES lines
            (checked before parsing).
    """
    import stat

    entries, problems = [], []
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise SidecarError(f"caption sidecar {path}: not a regular file")
        if st.st_size > MAX_SIDECAR_BYTES:
            raise SidecarError(f"caption sidecar {path}: {st.st_size} bytes, more than the {MAX_SIDECAR_BYTES} "
                               "a sidecar may have")
        raw = path.read_bytes()[:MAX_SIDECAR_BYTES + 1]
    except OSError as exc:
        return [], [f"{path}: cannot read caption sidecar: {exc.strerror or exc}"]
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if len(lines) > MAX_SIDECAR_LINES:
        raise SidecarError(f"caption sidecar {path}: {len(lines)} lines, more than the {MAX_SIDECAR_LINES} "
                           "a sidecar may have")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            problems.append(f"{path}:{n}: skipped caption line ({len(line)} characters, more than {MAX_LINE_CHARS})")
            continue
        try:
            obj = json.loads(line)
            start, end, caption = float(obj["start"]), float(obj["end"]), str(obj["caption"])
            if not end > start:
                raise ValueError("end must be after start")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path}:{n}: skipped caption line ({type(exc).__name__}: {exc})")
            continue
        entries.append(SidecarEntry(start, end, caption))
    return sorted(entries, key=lambda e: (e.start, e.end)), problems


def sidecar_caption(entries: list[SidecarEntry], start: float, end: float) -> str | None:
    """The sidecar caption that covers most of [start, end), if it covers at least half of it."""
    best, best_overlap = None, 0.0
    for e in entries:
        overlap = min(end, e.end) - max(start, e.start)
        if overlap > best_overlap + 1e-9:
            best, best_overlap = e, overlap
    if best is not None and best_overlap >= 0.5 * (end - start) - 1e-9:
        return best.caption
    return None


def template_caption(trigger: str, title: str, description: str) -> str:
    """"exp style, Big Buck Bunny: animated short, green meadow" from the title metadata."""
    body = ": ".join(p for p in (title.strip(), description.strip()) if p)
    return ", ".join(p for p in (trigger.strip(), body) if p)


def with_trigger(trigger: str, caption: str) -> str:
    """Put the trigger token first unless the caption already has it."""
    trigger = trigger.strip()
    if not trigger or caption.lower().startswith(trigger.lower()):
        return caption
    return f"{trigger}, {caption}"


def check_captioner(model: str) -> None:
    """Fail early (before any title is staged) when the captioner model can't be found.

    Raises:
        ValueError: naming the `captioner` setting and the loader's complaint.
    """
    import transformers

    try:
        transformers.AutoConfig.from_pretrained(model)
    except Exception as exc:
        raise ValueError(f"build setting captioner={model!r}: cannot load its config ({exc})") from exc


class VLMCaptioner:
    """Caption a clip's middle frame with an image-to-text model from transformers.

    Works with any model that `AutoModelForImageTextToText` (or the older Vision2Seq auto class)
    and `AutoProcessor` load, e.g. BLIP (`Salesforce/blip-image-captioning-base`) or a local
    directory. Loading honours HF_HUB_OFFLINE, so point it at a local path on offline machines.
    """

    def __init__(self, model: str, prompt: str = "", max_new_tokens: int = 30, device: str = "cpu"):
        import torch
        import transformers

        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.device = device
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model)
        except Exception as exc:
            raise RuntimeError(f"captioner model {model!r}: cannot load its processor: {exc}") from exc
        last_exc = None
        for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
            auto = getattr(transformers, name, None)
            if auto is None:
                continue
            try:
                self.model = auto.from_pretrained(model).to(device).eval()
                break
            except Exception as exc:  # try the next auto class
                last_exc = exc
        else:
            raise RuntimeError(f"captioner model {model!r}: cannot load an image-to-text model: {last_exc}")
        torch.manual_seed(0)

    def __call__(self, frames: np.ndarray) -> str:
        import torch
        from PIL import Image

        image = Image.fromarray(frames[len(frames) // 2])
        kwargs = {"text": self.prompt} if self.prompt else {}
        inputs = self.processor(images=image, return_tensors="pt", **kwargs).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        text = self.processor.batch_decode(out, skip_special_tokens=True)[0]
        if self.prompt and text.startswith(self.prompt):
            text = text[len(self.prompt):]
        return text
