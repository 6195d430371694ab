"""Request policies: when a device asks the cloud for new parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import NUM_ITEMS, W
from test_device import FakeService

from duet.device import Bundle, DeviceRuntime
from duet.device.policy import RequestPolicy, new_items, window_drift
from duet.device.runtime import KEPT, SERVICE

CLICKS = list(range(1, 21))  # a device that clicks items 1..20, one at a time


@pytest.mark.parametrize("last, current, expected", [
    ([1, 2, 3], [1, 2, 3, 4], 1),  # a window still filling up
    ([1, 2, 3, 4], [2, 3, 4, 5], 1),  # slid by one click
    ([1, 2, 3, 4], [4, 5, 6, 7], 3),
    ([1, 2, 3, 4], [5, 6, 7, 8], 4),  # nothing in common
    ([1, 2, 3, 4], [1, 2, 3, 4], 0),
])
def test_new_items_counts_what_entered_the_window(last, current, expected) -> None:
    assert new_items(np.array(last), np.array(current)) == expected


def test_new_items_compares_whole_samples() -> None:
    """Float samples (images) count alike: a row is new unless the whole row matches."""
    rows = np.arange(5 * 6, dtype=np.float32).reshape(5, 2, 3)
    assert new_items(rows[:3], rows[1:5]) == 2
    changed = rows[1:5].copy()
    changed[1, 1, 2] += 1  # one value of the second sample
    assert new_items(rows[:3], changed) == 4


def test_window_drift_is_a_cosine_distance() -> None:
    embedding = np.array([[0, 0], [1, 0], [1, 0], [0, 1]], float)
    assert window_drift(embedding[[1, 2]], embedding[[2, 1]]) == pytest.approx(0.0)
    assert window_drift(embedding[[1]], embedding[[3]]) == pytest.approx(1.0)
    assert window_drift(embedding[[1]], embedding[[1, 3]]) == pytest.approx(1 - 2**-0.5)
    # over the newest item only, a window that just turned is all new
    assert window_drift(embedding[[1, 2]], embedding[[2, 3]], recent=1) == pytest.approx(1.0)
    assert window_drift(embedding[[1, 2]], embedding[[2, 3]]) == pytest.approx(1 - 2**-0.5)


def replay(bundle: Bundle, policy: RequestPolicy) -> tuple[list[str], int, list[list[int]]]:
    """The scripted timeline: observe each click, then refresh; (sources, requests, windows sent)."""
    fake = FakeService(bundle, [])
    runtime = DeviceRuntime(bundle, "unused", "d", retries=0, policy=policy)
    sources = []
    with fake.running() as url:
        runtime.client.url = url + "/v1/parameters"
        for item in CLICKS:
            runtime.observe(item)
            sources.append(runtime.refresh())
    assert runtime.requests == len(fake.requests) == sources.count(SERVICE)
    assert runtime.bytes_received > 0
    return sources, runtime.requests, [r["window"] for r in fake.requests]


def test_always_asks_at_every_click(bundle_dir: Path) -> None:
    sources, requests, _ = replay(Bundle(bundle_dir), RequestPolicy())
    assert requests == len(CLICKS) and set(sources) == {SERVICE}


def test_every_k_asks_once_k_new_items_arrived(bundle_dir: Path) -> None:
    sources, requests, windows = replay(Bundle(bundle_dir), RequestPolicy("every", k=3))
    # the first click (no parameters yet), then clicks 4, 7, ..., 19
    assert requests == 7 and [w[-1] for w in windows] == [1, 4, 7, 10, 13, 16, 19]
    assert sources.count(KEPT) == len(CLICKS) - 7


def test_drift_asks_when_the_taste_moves(bundle_dir: Path) -> None:
    """Items 1-10 point one way, 11-20 another: besides the first request, one more, once the
    window (W=4) holds mostly new-direction items."""
    bundle = Bundle(bundle_dir)
    embedding = np.zeros((NUM_ITEMS, 2))
    embedding[1:11, 0] = 1.0
    embedding[11:21, 1] = 1.0
    bundle.features = lambda ids: embedding[np.asarray(ids).reshape(-1)]  # instead of the features graph
    assert W == 4
    _, requests, windows = replay(bundle, RequestPolicy("drift", threshold=0.5))
    assert requests == 2 and windows == [[1], [10, 11, 12, 13]]
    _, requests, _ = replay(bundle, RequestPolicy("drift", threshold=0.0))
    assert requests == len(CLICKS)  # threshold 0: any window is due


def test_drift_on_the_features_graph_decides_as_the_item_embedding_table(bundle_dir: Path, duet_run: Path) -> None:
    """The features graph stands in for the embedding table bundles used to ship: the same requests."""
    from duet.checkpoint import load_run

    _, model, _ = load_run(duet_run)
    table = model.device_model.item_embedding.weight.detach().numpy()
    graph = replay(Bundle(bundle_dir), RequestPolicy("drift", threshold=0.05))
    tabled = Bundle(bundle_dir)
    tabled.features = lambda ids: table[np.asarray(ids).reshape(-1)]
    assert replay(tabled, RequestPolicy("drift", threshold=0.05)) == graph
    assert 1 < graph[1] < len(CLICKS)  # a threshold that decides something


def test_bad_policies_are_refused() -> None:
    for kwargs in ({"kind": "sometimes"}, {"kind": "every", "k": 0}, {"kind": "drift", "threshold": -1},
                   {"kind": "drift", "recent": 0}):
        with pytest.raises(ValueError):
            RequestPolicy(**kwargs)


def test_simulate_refuses_a_bad_policy_in_one_line(duet_run: Path) -> None:
    from typer.testing import CliRunner

    from duet.cli import app

    result = CliRunner().invoke(app, ["simulate", "--run", str(duet_run), "--policy", "every", "--every", "0"])
    assert result.exit_code == 2 and "--policy" in result.output and "Traceback" not in result.output
