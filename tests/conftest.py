"""Shared pytest fixtures: where the project's shared reference data lives.

The repository is checked out at ``<X>/main`` and the shared data at ``<X>/shared`` (override with the
environment variable ``CKA_LAB_SHARED``). Tests that need it skip, with the reason, when it is absent:
the package itself never needs it (it carries its own sample images in ``cka_lab/data/assets``).
With ``CKA_LAB_REQUIRE_SHARED=1`` (as in CI) they fail instead, and a run without the shared folder stops
at once: a fixture test cannot pass by skipping.

* ``shared_dir``   -> ``<X>/shared``
* ``data_dir``     -> ``<X>/shared/data``            (benchmark images, see its README.md)
* ``fixtures_dir`` -> ``<X>/shared/fixtures/edt``    (official EDT reference fixtures, see its README.md)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_path() -> Path:
    env = os.environ.get("CKA_LAB_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def shared_required() -> bool:
    """True when ``CKA_LAB_REQUIRE_SHARED`` is set (to anything but ``0``): missing shared data is an error."""
    return os.environ.get("CKA_LAB_REQUIRE_SHARED", "0").strip() not in ("", "0")


def _require(path: Path, what: str) -> Path:
    if not path.is_dir():
        reason = f"{what} not found at {path} (set CKA_LAB_SHARED to the shared folder to run this test)"
        if shared_required():
            pytest.fail(f"{reason}; CKA_LAB_REQUIRE_SHARED is set, so this is an error", pytrace=False)
        pytest.skip(reason)
    return path


def pytest_configure(config: pytest.Config) -> None:
    """Under ``CKA_LAB_REQUIRE_SHARED``, stop before collecting when the shared folder is incomplete
    (some tests decide to skip at collection time, where a fixture cannot fail them)."""
    if shared_required():
        for sub in ("data", "fixtures/edt"):
            if not (_shared_path() / sub).is_dir():
                raise pytest.UsageError(f"CKA_LAB_REQUIRE_SHARED is set but {_shared_path() / sub} is missing "
                                        "(set CKA_LAB_SHARED to the shared folder)")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository; the test is skipped if it is absent."""
    return _require(_shared_path(), "shared data folder")


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    """``shared/data``: the real benchmark images (Set5, McMaster, Rain100L, ...)."""
    return _require(shared_dir / "data", "shared benchmark images (shared/data)")


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    """``shared/fixtures/edt``: reference outputs and metric values from the official EDT code."""
    return _require(shared_dir / "fixtures" / "edt", "official EDT fixtures (shared/fixtures/edt)")
