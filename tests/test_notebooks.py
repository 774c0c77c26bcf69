"""The tutorial notebooks: stored without outputs, the same code in both languages, and they run top to bottom.

Executing them (nbclient, a real Jupyter kernel) checks what a reader sees, not only that nothing raises: the
plot cell renders a PNG (a bare Figure would show as the text ``<Figure size …>``), the training cell shows the
progress bar and Keras' per-epoch lines, and the ``verbose=0`` cell shows nothing at all.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = ["tutorial.ipynb", "tutorial.zh-CN.ipynb"]
KERAS_FILE = "keras_se_densenet_faces.weights.h5"
EPOCH_LINE = re.compile(
    r"^Epoch (\d+)/10 - 5/5 - \d+\.\ds - loss: \d\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d\.\d{4} - "
    r"val_accuracy: \d\.\d{4} - val_balanced_accuracy: \d\.\d{4} - val_auc: \d\.\d{4} - val_mAP: \d\.\d{4}( - best)?$"
)
CELL_TIMEOUT_S = 600
"""A hung cell fails the test; how fast the notebooks run is measured outside the tests (about 20-35 s each with one
thread on the 2-core VM, `tools/make_notebooks.py`' notebooks), never asserted."""


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(EXAMPLES / name, as_version=4)


def _code(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_chinese_notebook_has_the_english_code_cells() -> None:
    en, zh = _read(NOTEBOOKS[0]), _read(NOTEBOOKS[1])
    assert _code(zh) == _code(en)
    assert len(_code(en)) >= 12
    prose_en = [c.source for c in en.cells if c.cell_type == "markdown"]
    prose_zh = [c.source for c in zh.cells if c.cell_type == "markdown"]
    assert len(prose_zh) == len(prose_en)
    assert all(re.search(r"[\u4e00-\u9fff]", text) for text in prose_zh)  # every prose cell is in Chinese
    assert not any(re.search(r"[\u4e00-\u9fff]", text) for text in prose_en)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_stored_without_outputs(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.outputs for c in code] == [[]] * len(code)
    assert {c.execution_count for c in code} == {None}


def test_the_keras_file_is_small_and_not_a_fixture() -> None:
    path = EXAMPLES / KERAS_FILE
    assert path.stat().st_size < 1_000_000
    fixtures = Path(__file__).parent / "fixtures" / "keras"
    assert all(path.read_bytes() != f.read_bytes() for f in fixtures.iterdir())


def _cell(nb: nbformat.NotebookNode, startswith: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(startswith)]
    return cell


def _stream(cell: nbformat.NotebookNode, name: str) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


def _execute(name: str, folder: Path) -> nbformat.NotebookNode:
    import nbclient

    for f in (name, KERAS_FILE):
        shutil.copy(EXAMPLES / f, folder / f)  # the run folders go to folder/runs, not examples/
    nb = nbformat.read(folder / name, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": folder}}
    ).execute()
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Future, Path]]:
    """Both notebooks executed at the same time, each in its own kernel with one intra-op thread: on two cores the
    pair takes about as long as one. A notebook that fails raises in its own test (``Future.result()``)."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("ipywidgets")
    folders = {name: tmp_path_factory.mktemp("notebook") for name in NOTEBOOKS}
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(len(NOTEBOOKS)) as pool:
        patch.setenv("OMP_NUM_THREADS", "1")  # the kernels inherit it: one intra-op thread, as in every test
        futures = {name: pool.submit(_execute, name, folders[name]) for name in NOTEBOOKS}
        wait(futures.values())
    return {name: (futures[name], folders[name]) for name in NOTEBOOKS}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_shows_what_the_reader_needs(name: str, executed: dict[str, tuple[Future, Path]]) -> None:
    future, tmp_path = executed[name]
    nb = future.result()

    training = _cell(nb, "result = sedensenet.train(\n")
    lines = [line for line in _stream(training, "stdout").splitlines() if line.startswith("Epoch")]
    assert [int(EPOCH_LINE.match(line).group(1)) for line in lines] == list(range(1, 11)), lines
    bars = [o for o in training.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(bars) == 10  # one live bar per epoch (tqdm's widget)
    assert "epoch 1/10" in bars[0].data["text/plain"]

    assert _cell(nb, "result = sedensenet.train(resume=").outputs == []  # verbose=0: nothing at all
    (png,) = [o for o in _cell(nb, "result.plot()").outputs if "image/png" in o.get("data", {})]
    assert png.data["text/plain"].endswith("Figure size 1200x400 with 2 Axes>")  # the tutorial's 12x4 inches
    summary = _cell(nb, "result.summary()").outputs[0].data
    assert "<table>" in summary["text/html"] and "val_accuracy" in summary["text/plain"]
    assert "<th>epoch</th>" in summary["text/html"]
    assert re.search(r"^ +13  ", summary["text/plain"], re.M)  # the resumed run's last epoch

    model = _cell(nb, "trained = ").outputs[0].data["text/plain"]
    assert model.startswith("DenseNet 'se_densenet_tiny'") and "classes: ['face', 'non_face']" in model
    predictions = _cell(nb, "images = ").outputs[0].data["text/plain"]
    assert predictions.startswith("2 predictions") and "non_face" in predictions
    report = _cell(nb, "report = ").outputs[0].data
    assert "confusion matrix" in report["text/plain"] and "<table>" in report["text/html"]
    for source in ("from IPython.display import Image", "from sedensenet.explain"):
        assert any("image/png" in o.get("data", {}) for o in _cell(nb, source).outputs)
    converted = _cell(nb, "from sedensenet.keras_convert").outputs[0].data["text/plain"]
    assert "converted from keras_se_densenet_faces.weights.h5" in converted
    assert (tmp_path / "keras_faces.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tutorial"]
