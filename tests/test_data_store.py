"""The dataset format's helpers."""

import numpy as np

from duet.tasks.recommendation.data.store import PAD, tail_window


def test_tail_window_is_the_last_items_left_aligned():
    history = np.array([[4, 5, 6, 7, 0, 0], [9, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]])
    assert tail_window(history, 3).tolist() == [[5, 6, 7], [9, PAD, PAD], [4, 5, 6], [PAD, PAD, PAD]]
    assert tail_window(history, 8).tolist()[2] == [1, 2, 3, 4, 5, 6, PAD, PAD]


def test_tail_window_matches_a_per_row_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 21, 300)
    history = rng.integers(1, 50, (300, 20))
    history[np.arange(20)[None, :] >= lengths[:, None]] = PAD
    expected = np.zeros((300, 7), dtype=history.dtype)
    for row, n in enumerate(lengths):
        last = history[row, max(0, n - 7) : n]
        expected[row, : len(last)] = last
    assert np.array_equal(tail_window(history, 7), expected)
