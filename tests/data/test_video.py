"""Probing in a subprocess, decoder fallback, timestamp resampling, clip encode/decode."""
from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import pytest

from reelora.data.video import (DecodeReport, MediaError, decode_clip, encode_clip, grid_size, probe,
                                read_frames, resize_center_crop)
from tests.media import frame_times, make_audio_only, make_video, read_clock, render_frame, truncate


def decode_all(info, fps=8.0, decoder=None):
    if decoder:
        info = dataclasses.replace(info, decoder=decoder)
    report = DecodeReport()
    frames = list(read_frames(info, fps, range(grid_size(info, fps)), lambda f: f, report))
    return frames, report


@pytest.mark.parametrize("kwargs,suffix", [
    ({}, ".mp4"), ({"pix_fmt": "yuv420p10le"}, ".mkv"), ({"codec": "libvpx-vp9"}, ".webm"),
    ({"codec": "mpeg4"}, ".avi"), ({"codec": "libx265"}, ".mp4"), ({"rotate": 270}, ".mov"),
])
def test_decord_reads_common_formats_upright(tmp_path, kwargs, suffix):
    path = make_video(tmp_path / f"v{suffix}", 2, 8, 96, 64, **kwargs)
    info = probe(path)
    assert info.decoder == "decord" and (info.width, info.height) == (96, 64)
    frames, report = decode_all(info)
    assert len(frames) == 16 and report.stopped_at is None
    clocks = [read_clock(f) for _, _, f in frames]
    np.testing.assert_allclose(clocks, np.arange(16) / 8, atol=0.08)
    assert frames[0][2].shape == (64, 96, 3)


def test_decord_and_pyav_agree_on_vfr_and_rotation(tmp_path):
    path = make_video(tmp_path / "vfr.mp4", 3, 8, 96, 64, vfr=True, rotate=90)
    info = probe(path)
    a, _ = decode_all(info, decoder="decord")
    b, _ = decode_all(info, decoder="pyav")
    assert [(k, s) for k, s, _ in a] == [(k, s) for k, s, _ in b]
    src = np.asarray(frame_times(3, 8, vfr=True))
    for k, shown, frame in a:
        # by timestamp: the grid time k/8 shows the last source frame at or before it
        assert shown == pytest.approx(src[src <= k / 8 + 1e-6].max(), abs=1e-3)
        assert read_clock(frame) == pytest.approx(shown, abs=0.08)
    assert max(np.abs(fa.astype(int) - fb).max() for (_, _, fa), (_, _, fb) in zip(a, b)) <= 2


def test_pyav_fallback_when_decord_cannot_open(tmp_path):
    path = make_video(tmp_path / "anim.gif", 2, 8, 96, 64, codec="gif", pix_fmt="rgb8")
    info = probe(path)
    assert info.decoder == "pyav" and "DECORDError" in info.decord_error
    frames, _ = decode_all(info)
    assert len(frames) == 16


def test_truncated_faststart_file_keeps_its_readable_part(tmp_path):
    path = truncate(make_video(tmp_path / "t.mp4", 4, 8, 96, 64, faststart=True), 0.5)
    info = probe(path)
    assert info.declared_duration == pytest.approx(4.0) and 0.5 < info.duration < 3.0
    frames, _ = decode_all(info)
    assert len(frames) >= 4
    np.testing.assert_allclose([read_clock(f) for _, _, f in frames], np.arange(len(frames)) / 8, atol=0.08)


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_bytes(b""), "zero-byte file"),
    (lambda p: p.write_text("hello"), "not a readable video"),
    (lambda p: make_audio_only(p), "no video stream (audio only)"),
    (lambda p: truncate(make_video(p, 2, 8, 96, 64), 0.5), "not a readable video"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: None, "missing file"),
    (lambda p: p.symlink_to(p.parent / "nowhere"), "missing file (broken symlink)"),
])
def test_probe_rejects_bad_files_with_a_reason(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(MediaError) as info:
        probe(path)
    assert str(info.value).startswith(reason)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_rejected(tmp_path):
    path = make_video(tmp_path / "locked.mp4", 1, 8, 96, 64)
    path.chmod(0)
    with pytest.raises(MediaError, match="unreadable: Permission denied"):
        probe(path)


def test_probe_timeout_is_reported(tmp_path):
    path = make_video(tmp_path / "ok.mp4", 1, 8, 96, 64)
    with pytest.raises(MediaError, match="probe timed out"):
        probe(path, timeout=0.001)


def test_encode_is_reproducible_and_decodes_back():
    frames = np.stack([render_frame(i / 8, 48, 32, seconds=1) for i in range(8)])
    a, b = encode_clip(frames, 8.0, preset="ultrafast"), encode_clip(frames, 8.0, preset="ultrafast")
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    u8 = decode_clip(a)
    assert u8.shape == (8, 3, 32, 48) and str(u8.dtype) == "torch.uint8"
    assert np.abs(u8.permute(0, 2, 3, 1).numpy().astype(int) - frames).mean() < 6  # yuv420p blurs the colour edges
    f = decode_clip(a, dtype="float")
    assert f.min() >= -1 and f.max() <= 1 and np.allclose(f.numpy(), u8.numpy() / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match="even sizes"):
        encode_clip(frames[:, :31], 8.0)


def test_resize_center_crop_keeps_the_centre():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 255  # a centred white band half the width
    out = resize_center_crop(frame, 64, 64)  # 2:1 -> 1:1 crops the sides away
    assert out.shape == (64, 64, 3) and out.mean() > 250
