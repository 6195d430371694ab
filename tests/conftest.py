"""Shared fixtures. The prepared datasets are built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from duet.config import ProtocolConfig

# Small enough for fast training tests: ~60 users of MovieLens, short sequences.
TINY_PROTOCOL = ProtocolConfig(history_len=20, window_len=5)
TINY_USERS = 60


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """movielens-small prepared with the default protocol (about half a second)."""
    from duet.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "movielens"
    prepare_dataset(out, "movielens-small")
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 users of movielens-small, L=20, W=5 (default k-core, negatives, split)."""
    from duet.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_dataset(out, "movielens-small", protocol=TINY_PROTOCOL, max_users=TINY_USERS)
    return out
