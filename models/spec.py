"""The contract every backbone family implements, and the bundle of loaded components.

One small spec per family (finetrainers' ModelSpecification): how to load it, how to turn video and
prompts into what the transformer sees, the flow-matching forward, the LoRA targets, and how to build
the diffusers pipeline for sampling. Families compose shared helpers instead of inheriting behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from reelora.models.settings import SampleSettings


@dataclass
class Components:
    """The pieces of a video diffusion backbone, as diffusers/transformers objects.

    Any piece may be None when the caller asked for a subset (cached training needs no VAE).
    """

    family: str
    source: str
    """What was loaded: a built-in tiny name, a local directory or a hub id."""
    transformer: Any = None
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    scheduler: Any = None
    transformer_2: Any = None
    """A two-expert backbone's second denoiser (Wan2.2-A14B's low-noise expert); None for the others."""
    revision: str | None = None
    """Hash or hub revision identifying the exact weights (recorded in adapter lineage)."""
    extra: dict = field(default_factory=dict)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules present, by component name."""
        names = ("transformer", "transformer_2", "vae", "text_encoder")
        found = {n: getattr(self, n) for n in names if isinstance(getattr(self, n), torch.nn.Module)}
        # A family's other modules (LTX-2's connectors, audio VAE, vocoder) travel and cast with the rest.
        found.update({n: m for n, m in self.extra.items() if isinstance(m, torch.nn.Module)})
        return found


ALL_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


class ModelSpec(Protocol):
    """What train/, models/sample.py and the CLI need from a backbone family."""

    family: str
    pipeline_class_name: str
    """The diffusers pipeline `_class_name` in model_index.json that selects this family."""
    lora_targets: tuple[str, ...]
    """Default peft `target_modules` (module-name suffixes inside the transformer)."""
    sample_defaults: SampleSettings
    """Sampling settings the released checkpoints were tuned for (every field set)."""
    tiny_sample_defaults: SampleSettings
    """Sampling settings for the built-in `tiny-<family>` backbone (every field set)."""
    size_multiple: int
    """Height and width must be multiples of this (the pipeline's check_inputs)."""
    blocks: str
    """Attribute of the transformer holding its ModuleList of blocks (the unit FSDP shards and gathers)."""
    flow_shift: float
    """Timestep shift of the family's flow-matching scheduler (and of training sigmas that match it)."""
    prompt_embeds_keys: tuple[str, ...]
    """What the pipeline's `encode_prompt` returns, in order; each is also a keyword of its call (validation
    samples from prompts encoded once, without a text encoder)."""
    fp32_components: tuple[str, ...]
    """Components loaded in float32 whatever the training dtype (the model card's usage code does the same)."""
    published: dict[str, str]
    """Released checkpoints: hub id -> licence (the adapter model card's base licence)."""

    # Optional, for families that share a pipeline class with another (Wan2.1 / Wan2.2 are all WanPipeline):
    #   matches(index: dict) -> bool   whether a model_index.json is this family's (registry.resolve asks it)
    # and for two-expert backbones (Wan2.2-A14B, models/wan22.py):
    #   experts: tuple[str, ...]       the denoiser components, high noise first; each gets its own LoRA
    #   boundary(comps) -> float       the sigma at which sampling switches from the first to the second
    #   expert_file(base, component)   the adapter file name of one expert's weights

    def load(
        self,
        source: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        components: tuple[str, ...] = ALL_COMPONENTS,
        revision: str | None = None,
    ) -> Components:
        """Load components from a local diffusers directory or hub id (hub respects HF_HUB_OFFLINE)."""

    def tiny(self, seed: int = 0, components: tuple[str, ...] = ALL_COMPONENTS) -> Components:
        """A small random-initialised backbone built offline, identical for a given seed in any process."""

    def encode_video(self, comps: Components, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, F, C, H, W] in [-1, 1] -> normalised latents as the transformer consumes them."""

    def encode_prompt(self, comps: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts -> text conditioning tensors (batch first) for `forward`."""

    def forward(
        self, comps: Components, transformer: torch.nn.Module, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
        text: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-matching forward: noise latents at `sigmas` in [0, 1], return (prediction, target).

        `transformer` is passed separately from `comps` because training hands in the peft/DDP-wrapped one.
        """

    def decode_latents(self, comps: Components, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video [B, F, C, H, W] in [-1, 1]."""

    def pipeline_class(self) -> type:
        """The diffusers pipeline class (its `lora_state_dict` converts foreign LoRA key layouts)."""

    def pipeline(self, comps: Components) -> Any:
        """A diffusers pipeline over these components, for sampling."""

    def exports(self, sd: dict[str, torch.Tensor], alpha: float) -> dict[str, tuple[str, dict, str]]:
        """Adapter files besides the diffusers one (e.g. original-name ComfyUI keys):
        key -> (file name, tensors, one line for the model card). Empty when there are none."""
