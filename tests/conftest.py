"""Fixtures shared by every test folder.

``model_repo`` builds the reference models once per machine into ``.cache/test-models`` (or
``$FOGLINE_TEST_MODELS``) and reuses them while their hashes still verify; building is
deterministic, so a cached build is the same as a fresh one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def model_repo() -> Path:
    """A model repository (``DIR/<name>/<version>/``) holding minilm and digits, built if needed."""
    from edge_models.build import ensure_models

    root = Path(os.environ.get("FOGLINE_TEST_MODELS", REPO_ROOT / ".cache" / "test-models"))
    ensure_models(root)
    return root
