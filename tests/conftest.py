"""Shared fixtures. Built artifacts go to a per-run cache dir, never into the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    # Reuse one artifact cache across the whole run (and across runs when SAFECASCADE_HOME is set,
    # as `make test` does), so expensive artifacts are built once.
    if not os.environ.get("SAFECASCADE_HOME"):
        os.environ["SAFECASCADE_HOME"] = str(Path(config.rootpath) / ".cache" / "test-home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny real fast + static artifacts, built once per session (shared by the tier/training tests)."""
    from safecascade.training.tiny_models import build_tiny_models

    root = tmp_path_factory.getbasetemp() / "safecascade-tiny-models"
    return build_tiny_models(root, cache_root=tmp_path_factory.getbasetemp() / "emb-cache")
