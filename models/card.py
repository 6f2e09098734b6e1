"""The adapter's model card (OUTPUT/adapter/README.md): what a hub page and a user need, each fact from its source.

    base model  lineage `base_model`: a hub id as it is; a directory inside the Hugging Face cache
                (`.../models--ORG--NAME/snapshots/COMMIT`) as hub id ORG/NAME at that commit; any other directory
                by its path (no `base_model` metadata then: a path is not a hub id); a built-in `tiny-*` name as
                reelora's random test model, which diffusers cannot load from anywhere.
    licence     `other`: the adapter derives from the base (its licence: the family's `published` table) and from
                the training footage (the licence and rights holder every clip carries from library.yaml, lineage
                `rights`); reelora does not decide what their combination allows, so the card lists both.
    trigger     lineage `trigger`: library.yaml's `trigger`, which the shard build put first in every caption.
    usage       diffusers code that runs as written (tests/models/test_card.py executes it on tiny-wan), with the
                run's validation sample settings, and ComfyUI steps when the family exports a ComfyUI file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HF_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})/?$")
"""A model folder inside the Hugging Face cache: its path names the hub repo and commit."""
ADAPTER_NAME = "reelora"


@dataclass(frozen=True)
class Base:
    """The base model as the card names it."""

    source: str
    """What training loaded (config key `model`)."""
    kind: str
    """"hub" (a hub id, or a folder of the HF cache), "local" (another directory) or "tiny" (built-in)."""
    hub_id: str | None = None
    revision: str | None = None
    """The hub commit, when the source pins one (an HF-cache folder)."""
    license: str | None = None
    """The base's licence when the family publishes it under this hub id, else None (unknown to reelora)."""


def describe_base(source: str, family: str) -> Base:
    from reelora.models.registry import family_spec, is_tiny

    published = family_spec(family).published
    if is_tiny(source):
        return Base(source, "tiny")
    path = Path(source).expanduser()
    if path.is_dir():
        m = HF_SNAPSHOT.search(path.resolve().as_posix())
        if m is None:
            return Base(source, "local")
        hub_id = f"{m.group(1)}/{m.group(2)}"
        return Base(source, "hub", hub_id, m.group(3), published.get(hub_id))
    return Base(source, "hub", source, None, published.get(source))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def licence_section(base: Base, rights: dict) -> tuple[str, list[str]]:
    """(`license_name` metadata, the card's Licence section) from the base and the footage's rights.

    Args:
        rights: title id -> {"license", "rights_holder", "rights_expires"} as recorded in the clips.
    """
    data = sorted({r.get("license") or "unrecorded" for r in rights.values()}) or ["unrecorded"]
    base_licence = {"tiny": "none (random weights built by reelora)"}.get(base.kind, base.license)
    name = "-and-".join(_slug(x) for x in [*data, *([base.license] if base.license else [])])
    lines = [
        "## Licence",
        "",
        "`license: other`: this adapter is derived from the base model and from the training footage, and the",
        "terms of both apply to it. reelora records them; it does not decide what their combination allows.",
        "",
        f"- Base model `{base.hub_id or base.source}`: {base_licence or 'not known to reelora: see the base model’s own licence'}.",
        "- Training footage: the licence and rights holder each clip carried from the studio's `library.yaml`",
        "  (`reelora shards build` admits only titles whose licence allows training and has not expired):",
        "",
        "| title | licence | rights holder | expires |",
        "|---|---|---|---|",
        *(f"| {t} | {r.get('license') or 'unrecorded'} | {r.get('rights_holder') or 'unrecorded'} | "
          f"{r.get('rights_expires') or '-'} |" for t, r in sorted(rights.items())),
    ]
    if not rights:
        lines.append("| (no rights recorded in the shards) | unrecorded | unrecorded | - |")
    return name, lines


def sample_settings(base: Base, family: str, config: dict) -> dict:
    """The run's validation sample settings, unset ones from the family defaults (what `reelora sample` uses)."""
    from reelora.models.registry import family_spec, sample_defaults
    from reelora.models.settings import SampleSettings, setting_names

    given = (config.get("validation") or {}).get("sample") or {}
    mine = SampleSettings(**{k: v for k, v in given.items() if k in setting_names()})
    return mine.filled(sample_defaults(base.source, family_spec(family)))


def diffusers_usage(base: Base, family: str, adapter: str, prompt: str, settings: dict, seed: int = 0,
                    experts: list[str] | None = None) -> str:
    """Python that loads the base, this adapter, and writes one clip to sample.mp4 (runs as written).

    experts: a two-expert backbone's trained components (Wan2.2-A14B): one file each, each into its denoiser.
    """
    from reelora.models.lora import DIFFUSERS_FILE
    from reelora.models.registry import family_spec

    spec = family_spec(family)
    cls = spec.pipeline_class_name
    lines = ["import torch"]
    if base.kind == "tiny":
        lines += [
            "from diffusers.utils import export_to_video",
            "from reelora.models.registry import load_model",
            "",
            f"adapter = {adapter!r}  # this folder, or the hub repo you upload it to",
            "device = \"cuda\" if torch.cuda.is_available() else \"cpu\"",
            f"# {base.source!r} is reelora's built-in random test model (not on the hub): reelora builds it offline.",
            f"spec, comps = load_model({base.source!r})",
            "pipe = spec.pipeline(comps).to(device)",
        ]
    else:
        where = (f"{base.source} (a local directory, not a hub id)" if base.kind == "local"
                 else "the hub repo this adapter was trained on")
        dtypes = ", ".join(f"{name!r}: torch.float32" for name in spec.fp32_components)
        dtype = f"{{{dtypes}, 'default': dtype}}" if dtypes else "dtype"
        load = f"{cls}.from_pretrained(base, torch_dtype={dtype}"
        load += f", revision={base.revision!r})" if base.revision else ")"
        lines += [
            f"from diffusers import {cls}",
            "from diffusers.utils import export_to_video",
            "",
            f"base = {(base.hub_id or base.source)!r}  # {where}",
            f"adapter = {adapter!r}  # this folder, or the hub repo you upload it to",
            "device = \"cuda\" if torch.cuda.is_available() else \"cpu\"",
            "dtype = torch.bfloat16 if device == \"cuda\" else torch.float32",
            *([f"# {', '.join(spec.fp32_components)} in float32: numerically fragile in half precision"]
              if spec.fp32_components else []),
            f"pipe = {load}.to(device)  # short of GPU memory: pipe.enable_model_cpu_offload() instead of .to(device)",
        ]
    negative = settings.get("negative_prompt")
    if experts:  # one file per expert, each loaded into its own denoiser and scaled there
        for c in experts:
            into = ", load_into_transformer_2=True" if c == "transformer_2" else ""
            lines.append(f"pipe.load_lora_weights(adapter, weight_name={spec.expert_file(DIFFUSERS_FILE, c)!r}, "
                         f"adapter_name={ADAPTER_NAME!r}{into})")
        lines += [f"pipe.{c}.set_adapters([{ADAPTER_NAME!r}], [1.0])  # this expert's strength" for c in experts]
    else:
        lines += [
            f"pipe.load_lora_weights(adapter, weight_name={DIFFUSERS_FILE!r}, adapter_name={ADAPTER_NAME!r})",
            f"pipe.set_adapters({ADAPTER_NAME!r}, 1.0)  # the adapter's strength: lower it to blend with the base",
        ]
    lines += [
        f"frames = pipe(prompt={prompt!r},{f' negative_prompt={negative!r},' if negative else ''}",
        f"              num_frames={settings['num_frames']}, height={settings['height']}, width={settings['width']},",
        f"              num_inference_steps={settings['steps']}, guidance_scale={settings['guidance']:g},",
        f"              generator=torch.Generator().manual_seed({seed})).frames[0]  # [frames, height, width, 3] in [0, 1]",
        f"export_to_video(frames, \"sample.mp4\", fps={settings['fps']:g})",
    ]
    return "\n".join(lines)


def model_card(*, rank: int, alpha: float, target_modules, family: str, lineage: dict, adapter_dir: str | Path,
               exports: dict[str, tuple[str, str]] | None = None, use_rslora: bool = False,
               use_dora: bool = False) -> str:
    """The README.md written beside the adapter files.

    Args:
        lineage: what `save_adapter` stores under `reelora.*` (base_model, base_revision, rights, trigger, config...).
        adapter_dir: the folder the files are in, as the usage code names it.
        exports: the family's other files, key -> (file name, what it holds).
        use_rslora, use_dora: the peft options it was trained with (lora.use_rslora, lora.use_dora).
    """
    from reelora.models.lora import DIFFUSERS_FILE, lora_scale

    exports = exports or {}
    base = describe_base(str(lineage.get("base_model", "?")), family)
    config = lineage.get("config") or {}
    trigger = (lineage.get("trigger") or "").strip()
    prompts = (config.get("validation") or {}).get("prompts") or []
    prompt = prompts[0] if prompts else (f"{trigger}, a scene in this style" if trigger else "a scene in this style")
    settings = sample_settings(base, family, config)
    license_name, licence = licence_section(base, lineage.get("rights") or {})

    meta = ["---"]
    if base.kind == "hub":
        meta += [f"base_model: {base.hub_id}", "base_model_relation: adapter"]
    meta += ["license: other", f"license_name: {license_name}", "library_name: diffusers",
             "pipeline_tag: text-to-video", "tags: [lora, video, text-to-video, reelora]"]
    if trigger:
        meta.append(f"instance_prompt: {_yaml_str(trigger)}")
    meta.append("---")

    if base.kind == "hub":
        base_line = f"`{base.hub_id}`" + (f" at commit `{base.revision}` (from the local HF cache folder `{base.source}`)"
                                          if base.revision else "")
    elif base.kind == "local":
        base_line = f"the local directory `{base.source}` (not a hub id: `base_model` metadata is left out)"
    else:
        base_line = f"`{base.source}`, reelora's built-in random test model (not on the hub)"
    trigger_text = (f"`{trigger}`: the shard build put it first in every training caption (library.yaml `trigger`); "
                    "start prompts with it." if trigger else
                    "none: the library sets no `trigger`, so the adapter learned from the captions as written.")
    lines = [
        *meta,
        "",
        f"# LoRA adapter for {base.hub_id or base.source}",
        "",
        f"Trained with reelora ({family} family) for {lineage.get('step', '?')} steps.",
        "",
        "| | |", "|---|---|",
        f"| base model | {base_line}" + (f"; weights recorded at training: `{lineage['base_revision']}`"
                                         if lineage.get("base_revision") else "") + " |",
        f"| trigger word | {trigger_text} |",
        f"| rank / alpha | {rank} / {alpha} (scale {lora_scale(rank, alpha, use_rslora):g}"
        + (", rsLoRA: alpha / sqrt(rank)" if use_rslora else "") + ") |",
        *([f"| DoRA | yes: magnitude vectors in `{DIFFUSERS_FILE}`; load it with diffusers (peft DoRA). No ComfyUI "
           "file is written: ComfyUI's `dora_scale` normalises differently from peft's DoRA |"] if use_dora else []),
        f"| target modules | `{target_modules}` |",
        f"| clips | {lineage.get('num_clips', '?')} from shards `{lineage.get('shards')}` "
        f"(index sha256 `{lineage.get('shards_index_sha256')}`) |",
        f"| titles | {', '.join(map(str, lineage.get('titles') or [])) or '-'} |",
        "",
        "## Use with diffusers",
        "",
        f"`{DIFFUSERS_FILE}` (diffusers keys; rank and alpha in its `lora_adapter_metadata`). Settings below are "
        "the ones this run was validated with.",
        "",
        "```python",
        diffusers_usage(base, family, str(adapter_dir), prompt, settings, int((config.get("validation") or {}).get("seed") or 0),
                        [k[len("diffusers_"):] for k in exports if k.startswith("diffusers_")]),
        "```",
        "",
    ]
    if "comfyui" in exports:
        name, note = exports["comfyui"]
        lines += [
            "## Use with ComfyUI",
            "",
            f"`{name}` holds {note}.",
            "",
            f"1. Copy `{name}` into `ComfyUI/models/loras/`.",
            "2. In a text-to-video workflow on the same base model, put a `LoraLoaderModelOnly` node between the",
            "   diffusion model loader and the sampler, select the file, strength 1.0.",
            f"3. {f'Start the prompt with `{trigger}`.' if trigger else 'Prompt as the captions were written.'}",
            "",
            "reelora's tests read this file back with diffusers' converter for the original layout and get the same",
            "weights; it has not been loaded in ComfyUI itself by them.",
            "",
        ]
    other = [f"`{name}` holds {note}." for key, (name, note) in exports.items() if key != "comfyui"]
    lines += [*licence, "", *other, "The full training config and lineage are in the safetensors metadata (`reelora.*` keys).", ""]
    return "\n".join(lines)


def _yaml_str(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string is a valid YAML scalar, whatever the trigger holds


def code_blocks(card: str, language: str = "python") -> list[str]:
    """The fenced code blocks of `language` in a card, in order (what a reader copies)."""
    return re.findall(rf"^```{language}\n(.*?)^```", card, re.S | re.M)
