"""Cold devices: items seen before each event, the bins, and metrics per bin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from duet.config import ProtocolConfig
from duet.tasks.recommendation.data.prepare import prepare_dataset
from duet.tasks.recommendation.data.store import Split, load_dataset
from duet.tasks.recommendation.data.synthetic_shift import ShiftConfig
from duet.tasks.recommendation.report.cold import LABELS, bin_of, by_seen, items_seen


def test_items_seen_is_the_targets_position(tmp_path: Path) -> None:
    """With L longer than any user's sequence, a history holds every item seen before it."""
    shift = ShiftConfig(users=40, items=120, min_clicks=10, max_clicks=40)
    prepare_dataset(tmp_path / "d", "synthetic-shift", shift=shift, protocol=ProtocolConfig(history_len=64))
    data = load_dataset(tmp_path / "d")
    for split in ("train", "valid", "test"):
        expected = (data[split].history != 0).sum(1)
        np.testing.assert_array_equal(items_seen(data, split), expected)
    assert items_seen(data, "train").min() == 1


def test_bins() -> None:
    assert LABELS == ("1-2", "3-5", "6-10", "11-50", "51+")
    np.testing.assert_array_equal(bin_of(np.array([1, 2, 3, 5, 6, 10, 11, 50, 51, 400])),
                                  [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


def test_metrics_per_bin_from_saved_scores(tmp_path: Path) -> None:
    # two users, one event each in bin 1-2 (perfectly ranked) and one in bin 6-10 (inverted)
    label = np.array([1, 0, 0, 1, 0, 0, 1, 0, 1, 0], np.float32)
    split = Split(user=np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 1]), item=np.arange(1, 11), label=label,
                  event=np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3]), line=np.arange(100, 110),
                  history=np.zeros((4, 3), np.int32), window=np.zeros((4, 2), np.int32))
    seen = np.array([1, 2, 7, 9])
    logits = np.array([3, 1, 2, 5, 4, 0, -1, 1, -2, 2], np.float32)
    order = np.arange(10)[::-1]  # saved in another order: matched by line
    save_file({"line": split.line[order].astype(np.int64), "logits": logits[order]}, str(tmp_path / "s.safetensors"))
    bins = by_seen(split, seen, tmp_path / "s.safetensors")
    assert set(bins) == {"1-2", "6-10"}
    assert bins["1-2"] == {"uauc": 1.0, "auc": pytest.approx(7 / 8), "users": 2, "events": 2}
    assert bins["6-10"]["uauc"] == 0.0 and bins["6-10"]["events"] == 2
