"""Same shards whatever --workers; an interrupted build resumes without redoing finished titles."""
from __future__ import annotations

from reelora.data.build import build
from tests.data.conftest import shard_hashes, tiny_config, write_library
from tests.media import make_video


def _library(tmp_path):
    m = tmp_path / "media"
    make_video(m / "a.mp4", 3, 8, 96, 64, scene_cuts=[1.5])
    make_video(m / "b.mp4", 2, 8, 96, 64, palette_offset=3, vfr=True)
    make_video(m / "c.mkv", 2, 8, 96, 64, palette_offset=5, pix_fmt="yuv420p10le")
    return write_library(tmp_path, [{"id": "a", "path": "media/a.mp4"}, {"id": "b", "path": "media/b.mp4"},
                                    {"id": "c", "path": "media/c.mkv"}])


def _damaged(path, tmp_path):
    """A video with 20 flipped bytes in its middle: still decodable, but with damaged frames."""
    import random

    data = bytearray(make_video(tmp_path / "src.mp4", 3, 24, 192, 128, scene_cuts=[1.5]).read_bytes())
    rng = random.Random(0)
    for _ in range(20):
        data[rng.randrange(len(data) // 5, len(data) - len(data) // 10)] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_workers_do_not_change_the_bytes(tmp_path, monkeypatch):
    lib = _library(tmp_path)
    # a damaged file: multi-threaded decoders conceal its errors differently per thread count (and per run)
    _damaged(tmp_path / "media" / "d.mp4", tmp_path)
    text = lib.read_text() + "- id: d\n  path: media/d.mp4\n  rights: {holder: H, license: L, training_allowed: true}\n"
    lib.write_text(text)
    monkeypatch.setattr("os.cpu_count", lambda: 16)  # as on a big machine: --workers used to set decode threads
    one = build(lib, tmp_path / "w1", tiny_config(workers=1, shard_max_clips=2))
    two = build(lib, tmp_path / "w2", tiny_config(workers=2, shard_max_clips=2))
    assert one.clips == two.clips and one.clips > 6 and not one.quarantined
    h1, h2 = shard_hashes(tmp_path / "w1"), shard_hashes(tmp_path / "w2")
    assert len(h1) >= 4 and h1 == h2
    for name in ("index.json", "audit.json", "audit.md", "audit.html"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_rerun_skips_finished_titles(tmp_path):
    lib = _library(tmp_path)
    out = tmp_path / "out"
    first = build(lib, out, tiny_config())
    assert (first.titles_staged, first.titles_skipped) == (3, 0)
    hashes = shard_hashes(out)
    # simulate a build killed while title "b" was being staged: its result is missing
    (out / "work" / "b" / "result.json").unlink()
    stamp = {t: (out / "work" / t / "result.json").stat().st_mtime_ns for t in ("a", "c")}
    again = build(lib, out, tiny_config())
    assert (again.titles_staged, again.titles_skipped) == (1, 2)
    assert {t: (out / "work" / t / "result.json").stat().st_mtime_ns for t in ("a", "c")} == stamp
    assert shard_hashes(out) == hashes  # and the result is the same as an uninterrupted build
    # changed settings invalidate staged work
    changed = build(lib, out, tiny_config(crf=30))
    assert changed.titles_staged == 3


def test_node_partition_stages_then_assembles(tmp_path):
    lib = _library(tmp_path)
    out = tmp_path / "out"
    n0 = build(lib, out, tiny_config(node_rank=0, num_nodes=2))
    n1 = build(lib, out, tiny_config(node_rank=1, num_nodes=2))
    assert (n0.titles_staged, n1.titles_staged) == (2, 1)  # titles 0, 2 and title 1
    assert not n0.assembled and not (out / "index.json").exists()
    final = build(lib, out, tiny_config())
    assert (final.titles_staged, final.titles_skipped, final.clips) == (0, 3, 6)
    ref = build(lib, tmp_path / "ref", tiny_config())
    assert shard_hashes(out) == shard_hashes(tmp_path / "ref") and ref.clips == 6
