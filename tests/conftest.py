"""Shared test settings: deterministic, single-threaded-friendly CPU runs."""

import logging
import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("SEDENSENET_HOME", os.path.join(os.path.dirname(__file__), ".cache"))


# One intra-op thread: the models under test are tiny, and on a shared 2-core machine torch's thread pool
# spends more time synchronising than computing (a tiny DenseNet forward: 4.5 s with 2 threads, 9 ms with 1).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_package_logger() -> Iterator[None]:
    """Tests call the CLI in-process, and ``cli.main`` points the package logger at that test's (captured,
    then closed) stderr with propagation off: put it back so later tests' caplog sees records."""
    logger = logging.getLogger("sedensenet")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
