"""The style metric: zero on identical sets, grows with colour/tone shifts, symmetric, content-blind."""
import numpy as np
import pytest

from reelora.demo.style import from_model_output, rgb_to_lab, style_distance, style_stats, style_terms


def _clips(seed=0, n=4, shape=(5, 16, 16)):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.1, 0.9, (*shape, 3)).astype(np.float32) for _ in range(n)]


def _shift(clips, delta):
    return [np.clip(c + np.array(delta, np.float32), 0, 1) for c in clips]


def test_lab_reference_colours():
    np.testing.assert_allclose(rgb_to_lab(np.array([1.0, 1.0, 1.0])), [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(rgb_to_lab(np.array([0.0, 0.0, 0.0])), [0, 0, 0], atol=0.05)
    np.testing.assert_allclose(rgb_to_lab(np.array([1.0, 0.0, 0.0])), [53.24, 80.09, 67.20], atol=0.1)


def test_identical_sets_are_at_zero():
    a = _clips()
    assert style_distance(a, [c.copy() for c in a]) == 0.0


def test_symmetric():
    a, b = _clips(0), _shift(_clips(1), (0.1, 0.0, -0.05))
    assert style_distance(a, b) == pytest.approx(style_distance(b, a))


def test_colour_shift_grows_the_distance_monotonically():
    a = _clips()
    d = [style_distance(a, _shift(a, (s, 0.0, 0.0))) for s in (0.0, 0.05, 0.1, 0.2)]
    assert d[0] == 0.0 and d[1] < d[2] < d[3]
    terms = style_terms(a, _shift(a, (0.2, 0.0, 0.0)))
    assert terms["a"] > 1.0  # more red reads as a larger a* (green-red) term


def test_content_blind_but_not_colour_blind():
    # Same pixels, different arrangement (order of clips, shuffled pixels, a different resolution):
    # same look. The same content tinted blue: a different look.
    a = _clips(0, n=3, shape=(2, 8, 8))
    rng = np.random.default_rng(5)
    shuffled = [rng.permutation(c.reshape(-1, 3)).reshape(c.shape) for c in a[::-1]]
    upscaled = [c.repeat(2, axis=1).repeat(2, axis=2) for c in a]
    assert style_distance(a, shuffled) < 0.15  # quantile interpolation only
    assert style_distance(a, upscaled) < 0.15
    assert style_distance(a, _shift(a, (0.0, 0.0, 0.15))) > 10 * style_distance(a, shuffled) + 1.0


def test_grey_vs_colourful_shows_in_saturation_and_flat_vs_textured_in_contrast():
    colour = _clips(0)
    grey = [np.repeat(c.mean(-1, keepdims=True), 3, -1) for c in colour]
    t = style_terms(colour, grey)
    assert t["saturation"] > 10 and style_stats(grey).saturation < 0.5
    flat = [np.full_like(c, 0.5) for c in colour]
    assert style_terms(colour, flat)["contrast"] > 10


def test_motion_reported_apart_from_distance():
    still = [np.repeat(c[:1], 5, axis=0) for c in _clips(0)]
    moving = [np.concatenate([c[:1], np.roll(c[:1], 3, axis=2).repeat(4, axis=0)]) for c in _clips(0)]
    t = style_terms(still, still)
    assert style_stats(still).motion == 0.0 and style_stats(moving).motion > 0
    # Same frames but played differently: no style change, only motion.
    played = [c[::-1] for c in moving]
    assert style_distance(moving, played) == 0.0
    assert style_terms(still, moving)["motion_delta"] > 0
    assert t["distance"] == 0.0


def test_inputs_uint8_and_model_output_agree():
    import torch

    a = _clips(0, n=2)
    as_u8 = [np.round(c * 255).astype(np.uint8) for c in a]
    assert style_distance(a, as_u8) < 0.2
    video = torch.from_numpy(np.stack(a)).permute(0, 1, 4, 2, 3) * 2 - 1  # [B, F, C, H, W] in [-1, 1]
    assert style_distance(a, from_model_output(video)) < 1e-3


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no clips"):
        style_stats([])
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        style_stats([np.zeros((5, 3, 8, 8), np.float32)])
    with pytest.raises(ValueError, match="from_model_output"):
        style_stats([np.full((2, 4, 4, 3), -0.5, np.float32)])


def test_read_video_from_path_bytes_and_file_object(tmp_path):
    import io

    from reelora.demo.style import read_video
    from reelora.models.media import write_mp4

    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[:, :, :, 0] = np.array([40, 120, 200], np.uint8)[:, None, None]  # red ramps up over time
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=8)
    from_path = read_video(path)
    assert from_path.dtype == np.uint8 and from_path.shape == (3, 16, 16, 3)
    assert np.abs(from_path.astype(int) - frames).max() <= 8  # H.264 at crf 12 is near-lossless
    assert np.array_equal(read_video(path.read_bytes()), from_path)
    assert np.array_equal(read_video(io.BytesIO(path.read_bytes())), from_path)


def test_read_video_names_a_file_it_cannot_decode(tmp_path):
    from reelora.demo.style import read_video

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4: cannot decode"):
        read_video(broken)
