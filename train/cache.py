"""Content-addressed latent/text cache: encode every clip and caption once, reuse across runs and ranks.

Layout under the cache root:
    latents/ab/<sha256>.safetensors   {"latents": [C, f, h, w]}
    text/ab/<sha256>.safetensors      the spec's text dict for one caption (e.g. {"prompt_embeds": [L, D]})
    models/<id>.json                  which VAE / text encoder / dtype built entries (for clear errors)

A latent entry's address hashes (clip sha256, frames, height, width, VAE id, dtype); a text entry's hashes
(caption, text-encoder id, max text length, dtype). Nothing depends on rank or world size, so a cache
built by 8 processes serves a run on 1, and entries already present are never recomputed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from reelora.data.shards import ClipRef, ShardSet, decode_frames
from reelora.dtypes import canonical_dtype, parse_dtype
from reelora.files import save_safetensors_atomic, write_text_atomic
from reelora.train.batches import DataError

FORMAT = "reelora-cache/1"


@dataclass(frozen=True)
class CacheIds:
    """What the cached tensors depend on besides the clip/caption itself."""

    vae: str
    text_encoder: str
    dtype: str
    max_text_len: int

    @classmethod
    def of(cls, comps, dtype: str = "fp32") -> "CacheIds":
        from reelora.models.common import is_local

        # A local directory is named by its weights hash, not its path: `runs/x/base` and its absolute path
        # (or a moved copy) are the same model and must hit the same cache entries.
        if is_local(comps.source) and comps.revision:
            ident = f"local@{comps.revision}"
        else:
            ident = f"{comps.source}@{comps.revision}" if comps.revision else comps.source
        return cls(vae=f"{ident}/vae", text_encoder=f"{ident}/text_encoder", dtype=dtype,
                   max_text_len=int(comps.extra.get("max_text_len", 0)))

    def manifest_name(self) -> str:
        return _sha(json.dumps(asdict(self), sort_keys=True))[:16] + ".json"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class LatentCache:
    """Read/write access to one cache root for one set of model ids."""

    def __init__(self, root: str | Path, ids: CacheIds):
        self.root, self.ids = Path(root), ids

    # addresses ---------------------------------------------------------------------------------------
    def latent_address(self, clip: ClipRef) -> str:
        m = clip.meta
        parts = ["latents", clip.sha256(), m.get("num_frames"), m.get("height"), m.get("width"), self.ids.vae, self.ids.dtype]
        return _sha(json.dumps(parts))

    def text_address(self, caption: str) -> str:
        return _sha(json.dumps(["text", caption, self.ids.text_encoder, self.ids.max_text_len, self.ids.dtype]))

    def _path(self, kind: str, address: str) -> Path:
        return self.root / kind / address[:2] / f"{address}.safetensors"

    def latent_path(self, clip: ClipRef) -> Path:
        return self._path("latents", self.latent_address(clip))

    def text_path(self, caption: str) -> Path:
        return self._path("text", self.text_address(caption))

    # reading -----------------------------------------------------------------------------------------
    def load_latents(self, clip: ClipRef) -> torch.Tensor:
        return load_file(self.latent_path(clip))["latents"]

    def load_text(self, caption: str) -> dict[str, torch.Tensor]:
        return load_file(self.text_path(caption))

    def check(self, clips: list[ClipRef], what: str = "data.cache") -> None:
        """Raise DataError unless every clip's latents and every caption (and "") are cached for these ids."""
        if not self.root.is_dir():
            raise DataError(f"{what}: cache directory {str(self.root)!r} does not exist (build it with `reelora cache`)")
        missing = [c for c in clips if not self.latent_path(c).is_file()]
        captions = sorted({c.caption for c in clips} | {""})
        missing_text = [t for t in captions if not self.text_path(t).is_file()]
        if not missing and not missing_text:
            return
        others = [json.loads(p.read_text()) for p in sorted((self.root / "models").glob("*.json"))]
        others = [o for o in others if o.get("vae") != self.ids.vae or o.get("dtype") != self.ids.dtype
                  or o.get("text_encoder") != self.ids.text_encoder]
        hint = ""
        if others:
            built = "; ".join(f"vae={o.get('vae')} text_encoder={o.get('text_encoder')} dtype={o.get('dtype')}" for o in others)
            hint = (f" The cache was built for another model/dtype ({built}); this run needs vae={self.ids.vae} "
                    f"text_encoder={self.ids.text_encoder} dtype={self.ids.dtype}.")
        keys = ", ".join(c.key for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{what}: cache {str(self.root)!r} lacks latents for {len(missing)} of {len(clips)} clips"
            f"{' (' + keys + ')' if missing else ''} and {len(missing_text)} captions.{hint} "
            f"Run `reelora cache --shards SHARDS --model MODEL --out {self.root}`."
        )

    # writing -----------------------------------------------------------------------------------------
    def write(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """Atomic write: concurrent ranks or an interrupted build never leave a half file at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        dtype = parse_dtype(self.ids.dtype)
        save_safetensors_atomic({k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}, path, meta)

    def write_manifest(self, model: str) -> None:
        path = self.root / "models" / self.ids.manifest_name()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"format": FORMAT, "model": model, **asdict(self.ids)}, indent=2))


def build_cache(shards: str, model: str, out: str, *, rank: int = 0, world: int = 1, dtype: str = "fp32",
                device: str | torch.device = "cpu", batch_size: int = 1, progress: bool = True) -> dict:
    """Encode this rank's share (every world-th clip and caption) of `shards` into the cache at `out`.

    Returns counts: {"latents_written", "latents_skipped", "text_written", "text_skipped", "clips"}.
    """
    from tqdm import tqdm

    from reelora.models.registry import load_model

    dtype = canonical_dtype(dtype, "cache dtype")  # entries hash the short name: bf16 and bfloat16 share them
    shard_set = ShardSet(shards, what="--shards")
    spec, comps = load_model(model, device=device, components=("vae", "text_encoder", "tokenizer"))
    cache = LatentCache(out, CacheIds.of(comps, dtype))
    cache.write_manifest(model)
    stats = dict(latents_written=0, latents_skipped=0, text_written=0, text_skipped=0, clips=len(shard_set.clips))

    mine = shard_set.clips[rank::world]
    todo = [c for c in mine if not cache.latent_path(c).is_file()]
    stats["latents_skipped"] = len(mine) - len(todo)
    bar = tqdm(total=len(todo), desc=f"cache latents (rank {rank})", disable=not progress)
    for i in range(0, len(todo), batch_size):
        group = todo[i:i + batch_size]
        frames = [decode_frames(c) for c in group]
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) > 1:  # different sizes cannot share a batch; encode one by one
            latents = [spec.encode_video(comps, f[None].to(device))[0] for f in frames]
        else:
            latents = list(spec.encode_video(comps, torch.stack(frames).to(device)))
        for clip, z in zip(group, latents):
            cache.write(cache.latent_path(clip), {"latents": z},
                        {"kind": "latents", "key": clip.key, "clip_sha256": clip.sha256(), "vae": cache.ids.vae})
            stats["latents_written"] += 1
        bar.update(len(group))
    bar.close()

    captions = sorted({c.caption for c in shard_set.clips} | {""})[rank::world]
    todo_text = [t for t in captions if not cache.text_path(t).is_file()]
    stats["text_skipped"] = len(captions) - len(todo_text)
    for i in range(0, len(todo_text), max(batch_size, 8)):
        group = todo_text[i:i + max(batch_size, 8)]
        enc = spec.encode_prompt(comps, group)
        for j, caption in enumerate(group):
            cache.write(cache.text_path(caption), {k: v[j] for k, v in enc.items()},
                        {"kind": "text", "text_encoder": cache.ids.text_encoder})
            stats["text_written"] += 1
    return stats
