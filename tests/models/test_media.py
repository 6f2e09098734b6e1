"""models/media.py: the one mp4 writer (provenance in the tags) and reader, and the contact sheet."""
from __future__ import annotations

import numpy as np

from reelora.models import media


def test_mp4_round_trip_with_provenance_and_odd_size(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(5, 17, 23, 3), dtype=np.uint8)
    path = media.write_mp4(tmp_path / "c.mp4", frames, fps=8, provenance={"prompt": "a fox", "seed": 3})
    decoded, tags = media.read_mp4(path)
    assert decoded.shape == (5, 18, 24, 3)  # padded to even sizes for yuv420p
    prov = media.read_provenance(path)
    assert prov.pop("content_credentials")["standard"] == "C2PA"  # write_mp4 says who signed its manifest
    assert prov == {"prompt": "a fox", "seed": 3}
    assert tags["title"] == "a fox"


def test_float_frames_are_converted(tmp_path):
    frames = np.full((3, 16, 16, 3), 0.5, dtype=np.float32)
    decoded, _ = media.read_mp4(media.write_mp4(tmp_path / "f.mp4", frames, fps=8))
    assert abs(int(decoded.mean()) - 128) <= 2
    sheet = media.contact_sheet(tmp_path / "s.png", [("clip", decoded)])
    assert sheet.is_file()
