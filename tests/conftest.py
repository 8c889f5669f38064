"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import save_toy_checkpoint


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory):
    """A random `toy` model file, for `hiar generate --checkpoint` (the bundled models are not in the
    repository while they are trained)."""
    return save_toy_checkpoint(tmp_path_factory.mktemp("toy") / "toy.safetensors")


# The tiny grid model and prompt states the sampler tests share (a module may define its own).
@pytest.fixture(scope="module")
def model():
    from tests.helpers import tiny_model

    return tiny_model()


@pytest.fixture(scope="module")
def text():
    torch.manual_seed(1)
    return torch.randn(1, 5, 16)
