"""Shared test settings: deterministic, single-threaded-friendly CPU runs."""

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("SEDENSENET_HOME", os.path.join(os.path.dirname(__file__), ".cache"))


# One intra-op thread: the models under test are tiny, and on a shared 2-core machine torch's thread pool
# spends more time synchronising than computing (a tiny DenseNet forward: 4.5 s with 2 threads, 9 ms with 1).
torch.set_num_threads(1)

# The suite runs float32 on every CPU, as on one without bf16 units: `--amp auto` would pick bf16 on CPUs with
# AVX512-BF16/AMX, and tests that compare exact numbers (paths, backends, processes, resumed runs) need one
# precision. Set in the environment, so the CLI in child processes (torchrun, kill-and-resume) sees it too. The
# bf16 paths have their own tests: tests/engine/test_amp.py removes it, test_fast_paths_autocast.py autocasts.
os.environ["SEDENSENET_CPU_BF16"] = "0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files that hold a test marked ``slow`` run first, each file's tests in their own order.

    With ``-n 2 --dist loadfile`` each worker takes the next file when it is free: long files first and the many
    short ones last fill both workers to the end (xdist's own order, most tests first, left a one-test file of 30 s
    to run alone at the end). pyproject's ``--no-loadscope-reorder`` keeps this order.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _reset_package_logger() -> None:
    logger = logging.getLogger("sedensenet")
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


@pytest.fixture(autouse=True)
def _clean_package_logger() -> Iterator[None]:
    """Tests call the CLI in-process (module-scoped fixtures too), and ``cli.main`` points the package logger
    at that test's captured stderr with propagation off: every test starts and ends with the default logger,
    so caplog sees the records."""
    _reset_package_logger()
    yield
    _reset_package_logger()


TINY_RUN_SETTINGS = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 8, "workers": 0, "augment": "none"}
"""The shared run's settings: a tiny SE-DenseNet on 16x16 images, 16 training images (two steps an epoch)."""


@dataclass(frozen=True)
class TinyRun:
    data: Path
    """The generated two-class folder it trained on (tests/imagegen.py, 8 images per class)."""
    result: Any
    """What ``sedensenet.train`` returned (a ``TrainResult``)."""

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """A finished two-epoch run, trained once per session for the tests that only read a run folder (copy it
    before changing anything: every test that asks for it sees the same folder)."""
    from imagegen import make_folder

    import sedensenet

    root = tmp_path_factory.mktemp("tiny_run")
    data = make_folder(root / "data", per_class=8)  # beside runs/: a test finds it at run_dir.parent.parent / "data"
    result = sedensenet.train(data=str(data), epochs=2, project=str(root / "runs"), verbose=0, **TINY_RUN_SETTINGS)
    return TinyRun(data=data, result=result)


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of six 16x16 images, shared by the tests that train a few tiny runs (tracking, tuning)."""
    from imagegen import make_folder

    return make_folder(tmp_path_factory.mktemp("tiny") / "images", per_class=6, size=16)
