"""Fixtures for the integration layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import MODEL_CACHE, REPO  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> str:
    subprocess.run([sys.executable, str(REPO / "tests/bed/tiny_model.py"), str(MODEL_CACHE)], check=True, timeout=600)
    return str(MODEL_CACHE)
