"""Model name / directory / hub id -> family spec, and one call to load a backbone."""
from __future__ import annotations

import torch

from reelora.models.common import model_index
from reelora.models.ltx import LTXSpec
from reelora.models.ltx2 import LTX2Spec
from reelora.models.spec import ALL_COMPONENTS, Components, ModelSpec
from reelora.models.wan import WanSpec
from reelora.models.wan22 import Wan22ExpertsSpec, Wan22Spec

FAMILIES: dict[str, ModelSpec] = {"wan": WanSpec(), "ltx": LTXSpec(), "wan22-5b": Wan22Spec(),
                                  "wan22-a14b": Wan22ExpertsSpec(), "ltx2": LTX2Spec()}
TINY_PREFIX = "tiny-"


def tiny_names() -> list[str]:
    return [TINY_PREFIX + f for f in FAMILIES]


def family_spec(family: str) -> ModelSpec:
    """The spec registered under `family` (as recorded in Components.family and adapter lineage).

    Raises:
        ValueError: an unknown family, listing the known ones.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def is_tiny(source: str) -> bool:
    """Whether `source` names a built-in tiny backbone (not a directory that happens to start with tiny-)."""
    return source.startswith(TINY_PREFIX) and not _looks_like_path(source)


def sample_defaults(source: str, spec: ModelSpec):
    """The family's sampling defaults for `source`: the tiny ones for a built-in tiny name."""
    return spec.tiny_sample_defaults if is_tiny(source) else spec.sample_defaults


def resolve(source: str, revision: str | None = None) -> ModelSpec:
    """The spec for a built-in tiny name, a local diffusers directory or a hub id.

    Raises:
        ValueError: the name looks built-in but is not, or model_index.json names an unsupported pipeline.
        FileNotFoundError: a directory/hub id without a readable model_index.json.
    """
    if is_tiny(source):
        family = source[len(TINY_PREFIX):]
        if family not in FAMILIES:
            raise ValueError(f"unknown built-in model {source!r}; built-ins: {', '.join(tiny_names())}")
        return FAMILIES[family]
    return spec_for_index(model_index(source, revision), source)


def spec_for_index(index: dict, source: str = "the model") -> ModelSpec:
    """The family a model_index.json describes: a family whose `matches(index)` says so (Wan2.2's flavours of
    WanPipeline), else the one family of that pipeline class without a `matches` (Wan2.1's WanPipeline).

    Raises:
        ValueError: model_index.json names an unsupported pipeline.
    """
    cls = index.get("_class_name", "")
    for spec in FAMILIES.values():
        if cls == spec.pipeline_class_name and getattr(spec, "matches", None) and spec.matches(index):
            return spec
    for spec in FAMILIES.values():
        if cls == spec.pipeline_class_name and not getattr(spec, "matches", None):
            return spec
    known = ", ".join(f"{s.pipeline_class_name} ({f})" for f, s in FAMILIES.items())
    raise ValueError(f"model {source!r}: model_index.json has _class_name={cls!r}; supported: {known}")


def resolve_published(hub_id: str) -> tuple[ModelSpec, dict]:
    """(family spec, transformer config) of a released checkpoint a family knows offline (`published_transformers`),
    for real-size builds on the meta device without reading the hub.

    Raises:
        ValueError: no family holds that hub id's architecture.
    """
    for spec in FAMILIES.values():
        config = getattr(spec, "published_transformers", {}).get(hub_id)
        if config is not None:
            return spec, config
    raise ValueError(f"{hub_id!r}: no family holds its published architecture")


def load_model(
    source: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    components: tuple[str, ...] = ALL_COMPONENTS,
    revision: str | None = None,
    seed: int = 0,
) -> tuple[ModelSpec, Components]:
    """Resolve `source` and load the requested components (tiny names are built from `seed`)."""
    spec = resolve(source, revision)
    if is_tiny(source):
        comps = spec.tiny(seed=seed, components=components)
        for m in comps.modules().values():
            # Tiny modules are built in fp32; the VAE stays fp32 (as real Wan loads it).
            m.to(device)
            if dtype != torch.float32 and m is not comps.vae:
                m.to(dtype)
        return spec, comps
    return spec, spec.load(source, dtype=dtype, device=device, components=components, revision=revision)


def _looks_like_path(source: str) -> bool:
    return "/" in source or source.startswith(".")
