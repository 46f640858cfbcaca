"""Fixtures of the training tests: tiny real-image folders in a session temp folder, no progress bars."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.threads import one_thread
from tests.train.helpers import make_train_folders


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("CKA_LAB_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def train_folders(data_dir: Path, tmp_path_factory) -> dict[str, Path]:
    return make_train_folders(data_dir, tmp_path_factory.mktemp("train_images"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One CPU thread: on a shared 2-core machine OpenMP's spinning threads make steps 20-40x slower."""
    with one_thread():
        yield
