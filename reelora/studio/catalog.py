"""The adapters a studio offers: found under one folder, read safely, summarised from their own lineage.

A folder holding `pytorch_lora_weights.safetensors` is one adapter (a training run's `adapter/`; its other
exports, e.g. `comfyui_lora.safetensors`, are the same weights and are not listed again; on a two-expert
backbone its low-noise expert's file comes with it, and both switch together). Any other
`.safetensors` file holding LoRA tensors is one adapter (ComfyUI / musubi files dropped in as they are);
other safetensors (latent caches, optimizer state) are passed over. `checkpoints/` folders are skipped: they
hold resume state, not adapters (no rank/alpha metadata). A file that cannot be used is listed with the
reason instead of stopping the studio.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reelora.models import adapters as adapter_io
from reelora.models.lora import DIFFUSERS_FILE

SKIP_DIRS = {"checkpoints"}
"""Folder names never searched: training's resume state (train/checkpoint.py)."""


@dataclass
class Entry:
    """One adapter found under the folder: its label, file, and the read adapter or why it cannot be used."""

    key: str
    """Label shown on the page: the path relative to the adapters folder."""
    path: Path
    adapter: adapter_io.Adapter | None = None
    experts: list[adapter_io.Adapter] = field(default_factory=list)
    """What the sampler attaches: one Adapter per expert file of a two-expert backbone's folder, else [adapter]."""
    error: str | None = None

    def lineage(self) -> dict:
        """Trigger word, titles, rank/alpha, base model, training step and file digest, for the page."""
        a = self.adapter
        if a is None:
            return {}
        lin = {k.removeprefix("reelora."): v for k, v in a.lineage.items()}
        cfg = adapter_io.lora_config_summary(a.lora_metadata, a.state_dict)
        titles = lin.get("titles")
        return {
            "trigger": lin.get("trigger") or None,
            "titles": list(titles) if isinstance(titles, (list, tuple)) else ([titles] if titles else []),
            "rank": cfg.get("r"),
            "alpha": cfg.get("lora_alpha"),
            "base_model": lin.get("base_model"),
            "step": lin.get("step"),
            "format": a.format,
            "sha256": a.sha256,
        }

    def describe(self) -> str:
        """Markdown lines under the adapter's name on the page."""
        if self.error:
            return f"**{self.key}**: not usable: {self.error}"
        info = self.lineage()
        titles = info["titles"]
        shown = ", ".join(str(t) for t in titles[:5]) + (f" (+{len(titles) - 5} more)" if len(titles) > 5 else "")
        trigger = f"`{info['trigger']}` (start prompts with it)" if info["trigger"] else "none recorded"
        rank = f"rank {info['rank']}" + (f", alpha {info['alpha']:g}" if isinstance(info["alpha"], (int, float)) else "")
        base = f"trained on `{info['base_model']}`" + (f" for {info['step']} steps" if info["step"] else "") \
            if info["base_model"] else "no training lineage (a file from another trainer)"
        return (f"**{self.key}** · {rank} · {info['format']} · sha256 `{info['sha256'][:12]}`  \n"
                f"trigger: {trigger}  \n"
                f"titles: {shown or 'none recorded'}  \n"
                f"{base}")


def find_adapters(root: str | Path, family: str | None = None) -> list[Entry]:
    """Every adapter under `root`, read and checked (safetensors only, finite values, known key layout).

    Args:
        family: the backbone family, which converts ComfyUI / musubi key layouts.

    Raises:
        FileNotFoundError: `root` is not a folder (named).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--adapters {root}: not a folder; give the folder that holds your adapters")
    entries = []
    for path in _candidates(root):
        key = str(path.parent.relative_to(root) if path.name == DIFFUSERS_FILE else path.relative_to(root))
        entry = Entry(key=key if key != "." else root.name, path=path)
        try:
            if not _holds_lora(path):
                continue  # a latent cache entry, optimizer state, full weights: not an adapter, not a problem
            # a training folder of a two-expert backbone holds one file per expert: they switch as one adapter
            entry.experts = adapter_io.read_adapters(path.parent if path.name == DIFFUSERS_FILE else path, 1.0, family)
            entry.adapter = entry.experts[0]
        except adapter_io.AdapterError as exc:
            entry.error = str(exc)
        entries.append(entry)
    return entries


def _holds_lora(path: Path) -> bool:
    """Whether a safetensors file's tensor names are LoRA names (reads the header only, not the tensors).

    Raises:
        AdapterError: the file is not safetensors at all (a pickle under a .safetensors name, a torn file).
    """
    from safetensors import SafetensorError, safe_open

    adapter_io.check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as exc:
        raise adapter_io.AdapterError(f"adapter {path}: unreadable safetensors file ({exc})") from exc
    return any(part in k for k in keys for part in ("lora_A", "lora_B", "lora_down", "lora_up", "lora_magnitude"))


def _candidates(root: Path) -> list[Path]:
    """Adapter files under `root`, in path order: a folder's DIFFUSERS_FILE stands for the whole folder."""
    found = []

    def walk(folder: Path) -> None:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors")
        if folder / DIFFUSERS_FILE in files:
            found.append(folder / DIFFUSERS_FILE)
        else:
            found.extend(files)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if sub.name not in SKIP_DIRS and not sub.name.startswith("."):
                walk(sub)

    walk(root)
    return found
