"""The procedural pretraining corpus: deterministic per (seed, index), varied, captions name what is drawn."""
import numpy as np

from reelora.demo.procedural import COLOURS, CorpusSettings, clip, corpus, to_model_input


def test_deterministic_and_independent_of_corpus_size():
    s = CorpusSettings(seed=3)
    a, caps_a = corpus(s, 6)
    b, caps_b = corpus(s, 3, start=3)
    np.testing.assert_array_equal(a[3:], b)
    assert caps_a[3:] == caps_b
    frames, cap = clip(s, 4)
    np.testing.assert_array_equal(frames, a[4])
    assert cap == caps_a[4]


def test_seed_changes_the_corpus():
    a, _ = corpus(CorpusSettings(seed=0), 4)
    b, _ = corpus(CorpusSettings(seed=1), 4)
    assert not np.array_equal(a, b)


def test_shapes_range_and_variety():
    s = CorpusSettings(num_frames=9, height=16, width=24)
    frames, caps = corpus(s, 40)
    assert frames.shape == (40, 9, 16, 24, 3) and frames.dtype == np.float32
    assert frames.min() >= 0 and frames.max() <= 1
    assert len(set(caps)) == 40  # no two captions alike
    means = frames.mean(axis=(1, 2, 3))  # per-clip mean colour: palettes and lighting vary
    assert means.std(axis=0).min() > 0.05
    assert any(f.std(axis=0).mean() > 0.01 for f in frames)  # something moves
    words = " ".join(caps)
    assert sum(name in words for name in COLOURS) >= 10
    assert "moving" in words and "panning" in words and "light" in words


def test_to_model_input_layout():
    frames, _ = corpus(CorpusSettings(height=8, width=8), 2)
    x = to_model_input(frames)
    assert tuple(x.shape) == (2, 5, 3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1
