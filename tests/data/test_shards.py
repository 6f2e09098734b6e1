"""The shard format: ShardSet reads what the builder wrote (by tar offsets), stock webdataset reads it too."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import webdataset as wds

from reelora.data.shards import INDEX, ShardError, ShardSet, decode_frames, iter_clips, read_index, write_index, write_shard


def test_shard_set_reads_every_clip_in_index_order(built):
    index = read_index(built)
    shards = ShardSet(built)
    assert len(shards) == index["num_samples"] == 15
    assert [c.key for c in shards.clips] == [k for s in index["shards"] for k in s["keys"]]
    assert {c.shape for c in shards.clips} == {(8, 32, 48)}
    assert shards.titles == ["black", "consent", "exclude", "good", "rot", "tenbit", "vfr"]
    clip = shards.clips[0]
    assert clip.meta["key"] == clip.key and clip.caption.startswith("tst style, ")
    assert clip.sha256() == clip.meta["clip_sha256"] == __import__("hashlib").sha256(clip.read("mp4")).hexdigest()
    frames = decode_frames(clip)  # the training layout
    assert frames.shape == (8, 3, 32, 48) and frames.dtype == torch.float32
    assert -1.0 <= frames.min() < 0 < frames.max() <= 1.0
    seen = list(iter_clips(built))
    assert [k for k, _, _ in seen] == [c.key for c in shards.clips]
    key, meta, mp4 = seen[0]
    assert meta["key"] == key and mp4[4:8] == b"ftyp"


def test_stock_webdataset_reads_the_shards(built):
    urls = [str(built / s["name"]) for s in read_index(built)["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 15
    assert {"mp4", "json", "jpg"} <= set(samples[0])
    meta = json.loads(samples[0]["json"])
    assert meta["clip_sha256"] == __import__("hashlib").sha256(samples[0]["mp4"]).hexdigest()


def test_damaged_or_missing_sets_are_named(built, tmp_path):
    with pytest.raises(ShardError, match=r"data.shards: shard directory '.*nowhere' does not exist"):
        ShardSet(tmp_path / "nowhere", what="data.shards")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match=r"data.shards: .*index.json: no shard index here \(build shards with"):
        ShardSet(tmp_path / "empty", what="data.shards")
    write_index(tmp_path / "empty", [])
    with pytest.raises(ShardError, match="holds no clips"):
        ShardSet(tmp_path / "empty")
    (tmp_path / "empty" / INDEX).write_text(json.dumps({"format": "other/1", "shards": []}))
    with pytest.raises(ShardError, match="format 'other/1'"):
        ShardSet(tmp_path / "empty")

    copy = tmp_path / "copy"
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("work"))
    first = read_index(copy)["shards"][0]["name"]
    (copy / first).unlink()
    with pytest.raises(ShardError, match=f"shard .*{first} is listed in .*index.json but missing"):
        ShardSet(copy)
    meta = json.dumps({"title_id": "t", "num_frames": 1, "height": 2, "width": 2}).encode()
    write_shard(copy / first, [{"__key__": "x", "mp4": b"\0", "json": meta}])
    with pytest.raises(ShardError, match=f"{first} holds 1 samples but index.json says 5"):
        ShardSet(copy)
    write_shard(copy / first, [{"__key__": "x", "json": meta}])
    with pytest.raises(ShardError, match="sample 'x' has no .mp4"):
        ShardSet(copy)
    (copy / first).write_bytes(b"not a tar" * 100)
    with pytest.raises(ShardError, match="unreadable"):
        ShardSet(copy)


def _copy(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("work"))
    return copy


def test_a_clip_with_flipped_bytes_is_named_when_read(built, tmp_path):
    from reelora.cli import main as reelora_main
    from reelora.data.shards import tar_members

    copy = _copy(built, tmp_path)
    shards = ShardSet(copy)
    clip = shards.clips[6]
    m = tar_members(clip.shard)[clip.key]["mp4"]
    data = bytearray((copy / "shard-000001.tar").read_bytes())
    data[m.offset + m.size // 2] ^= 0x40
    (copy / "shard-000001.tar").write_bytes(bytes(data))
    shards = ShardSet(copy)  # counts, keys and sizes still agree: opening is cheap and passes
    with pytest.raises(ShardError, match=rf"shard-000001.tar: {clip.key}.mp4 does not match its clip_sha256"):
        shards.clips[6].read("mp4")
    with pytest.raises(ShardError, match=rf"{clip.key}.mp4 does not match"):
        decode_frames(shards.clips[6])
    assert shards.clips[5].read("mp4") and shards.clips[7].read("mp4")  # the others still read
    assert reelora_main(["shards", "verify", str(copy)]) == 1


def test_shards_that_disagree_with_the_index_are_named(built, tmp_path):
    from reelora.data.shards import read_shard_samples, tar_members

    copy = _copy(built, tmp_path)
    name = read_index(copy)["shards"][1]["name"]
    samples = read_shard_samples(copy / name)
    # cut at a sample boundary: tar reads the first two samples and stops without complaint
    third = min(m.offset for m in tar_members(copy / name)[samples[2]["__key__"]].values()) - 512
    (copy / name).write_bytes((built / name).read_bytes()[:third])
    with pytest.raises(ShardError, match=rf"{name} holds 2 samples but index.json says 5"):
        ShardSet(copy)
    write_shard(copy / name, [samples[1], samples[0], *samples[2:]])  # same samples, another order
    with pytest.raises(ShardError, match=rf"{name} holds sample '{samples[1]['__key__']}' where index.json lists "
                                         rf"'{samples[0]['__key__']}'"):
        ShardSet(copy)
    # same keys, other bytes, 10 KiB more: tar pads to 10240-byte records, so a smaller change (the old
    # b"x" for the jpg) kept the size whenever the shard's last record had room (a coincidence of clip sizes)
    write_shard(copy / name, [*samples[:4], {**samples[4], "jpg": samples[4]["jpg"] + b"\0" * 10240}])
    with pytest.raises(ShardError, match=rf"{name} is \d+ bytes but index.json says"):
        ShardSet(copy)


def test_keys_inside_tars_are_plain_names(tmp_path):
    import io
    import tarfile

    from reelora.data.shards import tar_members

    for member in ["../../evil.mp4", "dir/x.mp4", "/abs.mp4", ".hidden.mp4"]:
        path = tmp_path / "bad.tar"
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo(member)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        with pytest.raises(ShardError, match="is not a plain KEY.EXT sample file"):
            tar_members(path)


def test_index_and_audit_are_bounded_before_parsing(built, tmp_path, monkeypatch):
    import reelora.data.shards as shards_mod
    from reelora.data.audit import read_audit

    copy = _copy(built, tmp_path)
    monkeypatch.setattr(shards_mod, "MAX_JSON_BYTES", 1000)
    with pytest.raises(ShardError, match=r"index.json: unreadable shard index \(ValueError: \d+ bytes, more than the "
                                         r"1000 a shard index may have\)"):
        read_index(copy)
    with pytest.raises(ShardError, match=r"audit.json: unreadable audit: \d+ bytes, more than the 1000"):
        read_audit(copy)
