"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def real_encoder():
    """The bundled all-MiniLM-L6-v2 on CPU, fp32, loaded once per test session."""
    from encoder import TransformerEncoder

    return TransformerEncoder(device="cpu")
