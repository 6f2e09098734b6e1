"""Captions for clips: sidecar file, else a vision-language model (optional), else a template.

The VLM is either a chat video model (Qwen2.5-VL, Qwen3-VL: several frames per clip as a video, an
instruction through the chat template) or an image captioner (BLIP: the middle frame), batched, on
the GPU when there is one, loaded once per staging worker (`captioner_for`).

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


DEFAULT_INSTRUCTION = ("Describe this video clip in one sentence: the subjects, the setting, the action and the "
                       "camera motion.")
"""What a chat VLM is asked when `--captioner-prompt` is empty (image captioners such as BLIP get no prompt)."""


def pick_device(device: str) -> str:
    """`auto` -> "cuda" when torch sees a GPU, else "cpu"; any other value is passed to torch as is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sample_frame_indices(length: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over a clip of `length` frames (first and last included)."""
    count = max(1, min(count, length))
    if count == 1:
        return [length // 2]
    return [round(i * (length - 1) / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class Picked:
    """The frames of one clip a captioner looks at, with their indices in the clip of `length` frames."""

    frames: np.ndarray
    indices: list[int]
    length: int


class VLMCaptioner:
    """Caption clips with a vision-language model from transformers, several clips per `generate` call.

    Two kinds of model, told apart by their processor:

    * chat video VLMs (Qwen2.5-VL, Qwen3-VL and others whose processor has a chat template and a
      video processor): `frames` frames spread over the clip go in as one video, after the
      instruction, through the processor's chat template;
    * image captioners (BLIP and other image-to-text models without a chat template): the clip's
      middle frame, with the instruction as a text prefix if one is set.

    Load it once per process (`captioner_for`): a 7B VLM takes longer to load than a title takes to
    stage. Loading honours HF_HUB_OFFLINE, so point `model` at a local directory on offline machines.
    """

    def __init__(self, model: str, instruction: str = "", max_new_tokens: int = 30, device: str = "auto",
                 frames: int = 8, batch_size: int = 8, fps: float = 16.0):
        import torch
        import transformers

        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.device = pick_device(device)
        self.frames = frames
        self.batch_size = batch_size
        self.fps = fps  # of the clips: frame timestamps for models that put them in the prompt (Qwen3-VL)
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model)
        except Exception as exc:
            raise RuntimeError(f"captioner model {model!r}: cannot load its processor: {exc}") from exc
        self.chat = bool(getattr(self.processor, "chat_template", None)) and \
            getattr(self.processor, "video_processor", None) is not None
        self.instruction = instruction or (DEFAULT_INSTRUCTION if self.chat else "")
        tokenizer = getattr(self.processor, "tokenizer", None)
        if self.chat and tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only: a batch's prompts must end where generation starts
        # bf16 halves a 7B model's memory on a GPU; CPUs keep fp32 (bf16 matmuls are slow or inexact there)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        last_exc = None
        for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
            auto = getattr(transformers, name, None)
            if auto is None:
                continue
            try:
                self.model = auto.from_pretrained(model, dtype=dtype).to(self.device).eval()
                break
            except Exception as exc:  # try the next auto class
                last_exc = exc
        else:
            raise RuntimeError(f"captioner model {model!r}: cannot load an image-to-text model: {last_exc}")
        torch.manual_seed(0)

    def __call__(self, frames: np.ndarray) -> str:
        """The caption of one clip (frames: T x H x W x 3 uint8)."""
        return self.caption_batch([self.pick(frames)])[0]

    def pick(self, clip: np.ndarray) -> "Picked":
        """The frames of `clip` (T x H x W x 3 uint8) the model will see: all a caption batch needs to hold."""
        idx = sample_frame_indices(len(clip), self.frames) if self.chat else [len(clip) // 2]
        return Picked(clip[idx].copy(), idx, len(clip))

    def caption_batch(self, picks: list["Picked"]) -> list[str]:
        """Captions of clips (from `pick`), `batch_size` clips per `generate` call."""
        out = []
        for i in range(0, len(picks), self.batch_size):
            batch = picks[i:i + self.batch_size]
            out += self._generate_video(batch) if self.chat else self._generate_image(batch)
        return out

    def _generate_video(self, picks: list["Picked"]) -> list[str]:
        from transformers.video_utils import VideoMetadata

        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": self.instruction}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # the frames are already picked: the processor must not sample again, and gets their times
        metadata = [VideoMetadata(total_num_frames=p.length, fps=self.fps, frames_indices=p.indices,
                                  duration=p.length / self.fps, height=p.frames.shape[1], width=p.frames.shape[2])
                    for p in picks]
        inputs = self.processor(text=[prompt] * len(picks), videos=[p.frames for p in picks], video_metadata=metadata,
                                do_sample_frames=False, padding=True, return_tensors="pt")
        return self._decode(inputs, strip_prompt_tokens=True)

    def _generate_image(self, picks: list["Picked"]) -> list[str]:
        from PIL import Image

        images = [Image.fromarray(p.frames[0]) for p in picks]
        kwargs = {"text": [self.instruction] * len(images)} if self.instruction else {}
        inputs = self.processor(images=images, return_tensors="pt", padding=True, **kwargs)
        texts = self._decode(inputs, strip_prompt_tokens=False)
        if self.instruction:
            texts = [t[len(self.instruction):] if t.startswith(self.instruction) else t for t in texts]
        return texts

    def _decode(self, inputs, strip_prompt_tokens: bool) -> list[str]:
        import torch

        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if "pixel_values_videos" in inputs:
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if strip_prompt_tokens:  # decoder-only models return the prompt too
            out = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(out, skip_special_tokens=True)


_LOADED: dict[tuple, VLMCaptioner] = {}


def captioner_for(cfg) -> VLMCaptioner:
    """The captioner `cfg` (a BuildConfig) asks for, loaded once per process and reused for every title."""
    key = (cfg.captioner, cfg.captioner_prompt, cfg.caption_max_tokens, cfg.caption_device, cfg.caption_frames,
           cfg.caption_batch, cfg.fps)
    if key not in _LOADED:
        _LOADED.clear()  # one model in memory at a time
        _LOADED[key] = VLMCaptioner(cfg.captioner, cfg.captioner_prompt, cfg.caption_max_tokens, cfg.caption_device,
                                    cfg.caption_frames, cfg.caption_batch, cfg.fps)
    return _LOADED[key]
