"""Shared test settings: deterministic, single-threaded-friendly CPU runs."""

import os

import pytest
import torch

os.environ.setdefault("SEDENSENET_HOME", os.path.join(os.path.dirname(__file__), ".cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
