"""Shared fixtures. Built artifacts go to a per-run cache dir, never into the repo.

The suite runs in parallel (``pytest -n auto``, pytest-xdist; ``make test``): session fixtures that
build something expensive build it once per run under a file lock in the directory the workers
share, and the other workers load it from there."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from filelock import FileLock


def pytest_configure(config):
    # Reuse one artifact cache across the whole run (and across runs when SAFECASCADE_HOME is set,
    # as `make test` does), so expensive artifacts are built once.
    if not os.environ.get("SAFECASCADE_HOME"):
        os.environ["SAFECASCADE_HOME"] = str(Path(config.rootpath) / ".cache" / "test-home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temporary directory that every xdist worker sees (the session's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_models(shared_tmp: Path) -> dict:
    """Tiny real fast + static artifacts, built once per run (shared by the tier/training tests and
    by every xdist worker: the first builds under the lock, the others load its results)."""
    from safecascade.training.tiny_models import build_tiny_models

    root = shared_tmp
    done = root / "safecascade-tiny-models.pickle"
    with FileLock(str(root / "safecascade-tiny-models.lock")):
        if done.is_file():
            return pickle.loads(done.read_bytes())
        built = build_tiny_models(root / "safecascade-tiny-models", cache_root=root / "emb-cache")
        done.write_bytes(pickle.dumps(built))
        return built
