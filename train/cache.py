"""Content-addressed latent/text cache: encode every clip and caption once, reuse across runs and ranks.

Layout under the cache root:
    latents/ab/<sha256>.safetensors   {"latents": [C, f, h, w]}
    text/ab/<sha256>.safetensors      the spec's text dict for one caption (e.g. {"prompt_embeds": [L, D]})
    models/<id>.json                  which VAE / text encoder / dtype built entries (for clear errors)

A latent entry's address hashes (clip sha256, frames, height, width, VAE id, dtype); a text entry's hashes
(caption, text-encoder id, max text length, dtype). Nothing depends on rank or world size, so a cache
built by 8 processes serves a run on 1, and entries already present are never recomputed.

Broken entries (a disk filled up, a copy cut short, bit rot) are found, named and rebuilt:
- each entry is written atomically and records the sha256 of its tensors (`sha256` in its header);
- `header_problem` checks an entry without reading its tensors: the safetensors header parses and the
  file is exactly as long as the header's data offsets say (one open and a read of ~200 bytes per entry:
  31 µs each measured on a local disk, so ~3 s per 100k entries). Training runs it on every entry it will
  read before it starts; `reelora cache` runs it on the entries already present and rebuilds the broken;
- reading an entry checks its keys, shapes and sha256 (one hash of bytes already in memory: ~5 ms for a
  4 MB latent), so a flipped byte stops training with a DataError naming the file and the clip;
  `reelora cache --verify full` reads every entry that way (the whole cache once) and rebuilds the broken.
Entries written before the sha256 was recorded are read without that check.
"""
from __future__ import annotations

import hashlib
import json
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

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


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and raw bytes (bf16 has no numpy dtype: hash the bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def full_problem(path: Path, kind: str) -> str | None:
    """What is wrong with an entry, loading its tensors and checking their sha256 (None: it is whole)."""
    problem = header_problem(path)
    if problem:
        return problem
    try:
        tensors, meta = _load(path)
    except (SafetensorError, OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    return content_problem(kind, tensors, meta)


def content_problem(kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str | None:
    """What is wrong with a loaded entry's tensors (None: the keys, shape and recorded sha256 agree)."""
    if kind == "latents":
        if set(tensors) != {"latents"}:
            return f"holds {sorted(tensors)} instead of ['latents']"
        if tensors["latents"].ndim != 4:
            return f"latents have shape {tuple(tensors['latents'].shape)}, not [C, frames, height, width]"
    elif not tensors:
        return "holds no tensors"
    if meta.get("kind", kind) != kind:
        return f"is a {meta['kind']!r} entry where a {kind!r} entry belongs"
    if "sha256" in meta and tensors_sha256(tensors) != meta["sha256"]:
        return "its tensors do not match the sha256 recorded when it was written (flipped bytes?)"
    return None


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def header_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, judged from its header and size alone (None: looks whole)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"only {size} bytes"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                return f"header length {n} does not fit a {size}-byte file (truncated?)"
            header = json.loads(f.read(n))
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError) as exc:
        return f"header is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= int(d)
            if stop - start != count * _ITEM_BYTES[info["dtype"]]:
                return f"tensor {name!r}: data offsets do not match its shape and dtype"
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r}: malformed header entry"
        end = max(end, stop)
    if 8 + n + end != size:
        return f"{size} bytes, but its header describes {8 + n + end} (truncated or padded)"
    return None


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
        """Raises DataError naming the entry file and the clip when the entry is unreadable or damaged."""
        return self.read(self.latent_path(clip), "latents", f"clip {clip.key}")["latents"]

    def load_text(self, caption: str, clip_key: str | None = None) -> dict[str, torch.Tensor]:
        """Raises DataError naming the entry file (and the clip, when given) when it is unreadable or damaged."""
        who = f"caption {caption[:60]!r}" + (f" of clip {clip_key}" if clip_key else "")
        return self.read(self.text_path(caption), "text", who)

    def read(self, path: Path, kind: str, who: str) -> dict[str, torch.Tensor]:
        """An entry's tensors, after checking they load and have the keys, shape and sha256 it was written with."""
        try:
            tensors, meta = _load(path)
        except (SafetensorError, OSError, ValueError) as exc:
            problem = header_problem(path) if path.is_file() else "missing"
            raise DataError(f"cache entry {path} ({kind} for {who}) is unreadable: {problem or exc}; "
                            f"{self.rebuild_hint()}") from None
        problem = content_problem(kind, tensors, meta)
        if problem:
            raise DataError(f"cache entry {path} ({kind} for {who}) is damaged: {problem}; "
                            f"{self.rebuild_hint(full=True)}")
        return tensors

    def rebuild_hint(self, full: bool = False) -> str:
        """The command that rebuilds broken entries of this cache (with the model it was built from)."""
        model = "MODEL"
        manifest = self.root / "models" / self.ids.manifest_name()
        try:
            model = json.loads(manifest.read_text()).get("model", model)
        except (OSError, ValueError):
            pass
        flag = " --verify full" if full else ""
        return f"rerun `reelora cache --shards SHARDS --model {model} --out {self.root}{flag}` to rebuild it"

    def entry_problems(self, clips: list[ClipRef], captions: list[str]) -> list[str]:
        """'PATH (what): problem' for each entry of these clips and captions whose header or size is wrong."""
        found = []
        for c in clips:
            problem = header_problem(self.latent_path(c))
            if problem:
                found.append(f"{self.latent_path(c)} (latents of clip {c.key}): {problem}")
        for t in captions:
            problem = header_problem(self.text_path(t))
            if problem:
                found.append(f"{self.text_path(t)} (text of caption {t[:60]!r}): {problem}")
        return found

    def check(self, clips: list[ClipRef], what: str = "data.cache") -> None:
        """Raise DataError unless every clip's latents and every caption (and "") are cached for these ids."""
        if not self.root.is_dir():
            raise DataError(f"{what}: cache directory {str(self.root)!r} does not exist (build it with `reelora cache`)")
        missing = [c for c in clips if not self.latent_path(c).is_file()]
        captions = sorted({c.caption for c in clips} | {""})
        missing_text = [t for t in captions if not self.text_path(t).is_file()]
        if not missing and not missing_text:
            broken = self.entry_problems(clips, captions)
            if broken:
                raise DataError(f"{what}: cache {str(self.root)!r} has {len(broken)} damaged entr"
                                f"{'y' if len(broken) == 1 else 'ies'}: {'; '.join(broken[:3])}"
                                f"{' ...' if len(broken) > 3 else ''}; {self.rebuild_hint()}")
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
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
        try:
            save_safetensors_atomic(tensors, path, {**meta, "sha256": tensors_sha256(tensors)})
        except (OSError, SafetensorError) as exc:  # e.g. a full disk: name the entry, not a temporary file
            from reelora.train.checkpoint import write_error

            raise DataError(write_error(path, exc, "cache entry", then="rerun the same `reelora cache`")) from None

    def write_manifest(self, model: str) -> None:
        path = self.root / "models" / self.ids.manifest_name()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"format": FORMAT, "model": model, **asdict(self.ids)}, indent=2))


VERIFY = ("header", "full")


def build_cache(shards: str, model: str, out: str, *, rank: int = 0, world: int = 1, dtype: str = "fp32",
                device: str | torch.device = "cpu", batch_size: int = 1, progress: bool = True,
                verify: str = "header", lock: bool = True) -> dict:
    """Encode this rank's share (every world-th clip and caption) of `shards` into the cache at `out`.

    Entries already present are checked (`verify`: "header" reads each header, "full" loads and hashes
    each entry) and the broken ones rebuilt, each named on stderr.

    Args:
        lock: hold `RunLock(out, "cache build")` while building (one writer per cache folder). Pass False
            when the caller holds it for every rank (`reelora cache` under `accelerate launch`).

    Returns counts: {"latents_written", "latents_skipped", "text_written", "text_skipped", "repaired", "clips"}.

    Raises:
        reelora.lock.LockError: another build holds `out` (its pid and command are in the message).
    """
    from contextlib import nullcontext

    from reelora.lock import RunLock

    if verify not in VERIFY:
        raise ValueError(f"verify={verify!r}: choose one of {', '.join(VERIFY)}")
    with RunLock(out, "cache build") if lock else nullcontext():
        return _build(shards, model, out, rank, world, canonical_dtype(dtype, "cache dtype"), device, batch_size,
                      progress, verify)


def _build(shards, model, out, rank, world, dtype, device, batch_size, progress, verify) -> dict:
    from tqdm import tqdm

    from reelora.models.registry import load_model

    shard_set = ShardSet(shards, what="--shards")
    spec, comps = load_model(model, device=device, components=("vae", "text_encoder", "tokenizer"))
    cache = LatentCache(out, CacheIds.of(comps, dtype))  # entries hash the short dtype name: bf16 == bfloat16
    cache.write_manifest(model)
    stats = dict(latents_written=0, latents_skipped=0, text_written=0, text_skipped=0, repaired=0,
                 clips=len(shard_set.clips))

    def needed(path: Path, kind: str) -> bool:
        """Missing, or present but broken (counted and named: it is rebuilt)."""
        if not path.is_file():
            return True
        problem = full_problem(path, kind) if verify == "full" else header_problem(path)
        if problem:
            print(f"reelora cache: rebuilding {path}: {problem}", file=sys.stderr, flush=True)
            stats["repaired"] += 1
        return problem is not None

    mine = shard_set.clips[rank::world]
    todo = [c for c in mine if needed(cache.latent_path(c), "latents")]
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
    todo_text = [t for t in captions if needed(cache.text_path(t), "text")]
    stats["text_skipped"] = len(captions) - len(todo_text)
    for i in range(0, len(todo_text), max(batch_size, 8)):
        group = todo_text[i:i + max(batch_size, 8)]
        enc = spec.encode_prompt(comps, group)
        for j, caption in enumerate(group):
            cache.write(cache.text_path(caption), {k: v[j] for k, v in enc.items()},
                        {"kind": "text", "text_encoder": cache.ids.text_encoder})
            stats["text_written"] += 1
    return stats
