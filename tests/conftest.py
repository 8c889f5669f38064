"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from tests.helpers import save_toy_checkpoint


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory):
    """A random `toy` model file, for `hiar generate --checkpoint` (the bundled models are not in the
    repository while they are trained)."""
    return save_toy_checkpoint(tmp_path_factory.mktemp("toy") / "toy.safetensors")
