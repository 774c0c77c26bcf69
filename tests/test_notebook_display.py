"""What a notebook shows: train's verbose levels, the live bar's choice, inline figures, tables and reprs."""

from __future__ import annotations

import io
import logging
import math
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagegen import CLASSES  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet.api import Prediction, Predictions  # noqa: E402
from sedensenet.cli import main  # noqa: E402
from sedensenet.display import Table  # noqa: E402
from sedensenet.engine import progress  # noqa: E402
from sedensenet.engine.progress import EpochProgress, TrainProgress, epoch_line  # noqa: E402
from sedensenet.reports import compute_metrics, plot_history  # noqa: E402

FAST = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 8, "workers": 0, "augment": "none"}
ROW = {"loss": 0.69314, "accuracy": 0.5, "val_loss": 0.6, "val_accuracy": 0.75, "lr": 1e-3, "seconds": 2.04}


@pytest.fixture(scope="module")
def data(tiny_run) -> Path:  # noqa: ANN001
    return tiny_run.data  # 8 images per class


@pytest.fixture(scope="module")
def run(tiny_run) -> sedensenet.api.TrainResult:  # noqa: ANN001
    return tiny_run.result  # two epochs with FAST's settings (tests/conftest.py)


def test_epoch_line_has_keras_shape() -> None:
    assert epoch_line(3, 10, ROW, 5, best=True) == (
        "Epoch 3/10 - 5/5 - 2.0s - loss: 0.6931 - accuracy: 0.5000 - val_loss: 0.6000 - val_accuracy: 0.7500 - best"
    )
    no_val = {**ROW, "val_loss": math.nan, "val_accuracy": math.nan}
    assert epoch_line(1, 1, no_val, 2) == "Epoch 1/1 - 2/2 - 2.0s - loss: 0.6931 - accuracy: 0.5000"


@pytest.mark.parametrize("verbose", [3, -1, 1.0, "1"])
def test_unknown_verbose_is_refused_before_any_work(verbose: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"verbose={verbose!r}: use 0 \(silent\), 1 .* or 2"):
        sedensenet.train(data=str(tmp_path / "does not exist"), verbose=verbose)


def test_verbose_2_writes_one_line_per_epoch_and_no_bar(data: Path, tmp_path: Path, capsys) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    result = sedensenet.train(data=str(data), epochs=2, project=str(tmp_path), verbose=2, **FAST)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"Run folder: {result.run_dir} (2 classes; train 12, val 4)"
    assert [line.split(" - ")[0] for line in lines[1:]] == ["Epoch 1/2", "Epoch 2/2"]
    h = result.history.history
    assert f"val_accuracy: {h['val_accuracy'][1]:.4f}" in lines[2] and f"loss: {h['loss'][0]:.4f}" in lines[1]
    assert err == ""
    assert (root.handlers, root.level) == before  # the library never configures the root logger


def test_verbose_0_prints_nothing(data: Path, tmp_path: Path, capsys) -> None:
    sedensenet.train(data=str(data), epochs=1, project=str(tmp_path), verbose=0, **FAST)
    assert capsys.readouterr() == ("", "")


def test_verbose_1_is_the_default_and_shows_no_bar_in_a_log(data: Path, tmp_path: Path, capsys) -> None:
    sedensenet.train(data=str(data), epochs=1, project=str(tmp_path), **FAST)  # stderr is not a terminal here
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith("Epoch 1/1 - 2/2 - ") and err == ""


def test_cli_output_has_no_epoch_lines(data: Path, tmp_path: Path, capsys) -> None:
    argv = ["train", "--data", str(data), "--epochs", "1", "--project", str(tmp_path), "-q"]
    argv += [a for k, v in FAST.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Epoch 1/" not in out and out.lstrip().startswith("Run folder:")


def test_bar_in_jupyter_is_tqdm_widget_or_text_without_ipywidgets(monkeypatch, caplog) -> None:
    tqdm_notebook = pytest.importorskip("tqdm.notebook")
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    if tqdm_notebook.IProgress is not None:
        bar = EpochProgress(4, "epoch 1/2")
        assert isinstance(bar.bar, tqdm_notebook.tqdm)
        bar.close()
    monkeypatch.setattr(tqdm_notebook, "IProgress", None)  # as without ipywidgets: tqdm.notebook refuses
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    bar = EpochProgress(4, "epoch 1/2")
    bar.update(8, None, None)
    bar.close()
    assert not isinstance(bar.bar, tqdm_notebook.tqdm) and "epoch 1/2" in stderr.getvalue()
    assert "pip install 'sedensenet[notebook]'" in caplog.text


def test_bar_follows_verbose_and_progress(monkeypatch) -> None:
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    assert TrainProgress(1).epoch_bar(3, 1, 2).bar is not None
    assert TrainProgress(2).epoch_bar(3, 1, 2).bar is None
    assert TrainProgress(0).epoch_bar(3, 1, 2).bar is None
    assert TrainProgress(0, bar=True).epoch_bar(3, 1, 2).bar is not None


def test_plot_returns_the_tutorials_figure_as_png(run: sedensenet.api.TrainResult) -> None:
    fig = run.plot()
    assert tuple(fig.get_size_inches()) == (12.0, 4.0)
    assert [ax.get_title() for ax in fig.axes] == ["Training and Validation Accuracy", "Training and Validation Loss"]
    png = fig._repr_png_()
    assert Image.open(io.BytesIO(png)).size == (1200, 400)
    lines = fig.axes[1].get_lines()
    assert list(lines[0].get_ydata()) == pytest.approx(run.history.history["loss"])
    assert lines[-1].get_xdata()[0] == run.best_epoch  # the dashed best-epoch line


def test_plot_history_takes_a_run_folder_a_csv_or_a_dict(run: sedensenet.api.TrainResult) -> None:
    loss = run.history.history["loss"]
    for source in (run.run_dir, run.run_dir / "history.csv", str(run.run_dir), {"loss": loss}, run.history):
        fig = sedensenet.plot_history(source)
        assert list(fig.axes[1].get_lines()[0].get_ydata()) == pytest.approx(loss)
    with pytest.raises(FileNotFoundError, match="no history.csv"):
        plot_history(run.run_dir / "weights")
    with pytest.raises(TypeError, match="not int"):
        plot_history(3)


def test_train_result_summary_and_repr(run: sedensenet.api.TrainResult) -> None:
    table = run.summary()
    text = str(table)
    assert text.splitlines()[1].split() == [
        "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_auc", "val_mAP", "lr",
        "seconds", "best"
    ]  # fmt: skip
    assert f"Best checkpoint: {run.best_checkpoint} (epoch {run.best_epoch})" in text
    assert table._repr_html_().count("<tr>") == 1 + len(run.history.epoch)
    assert repr(run).startswith(f"TrainResult(2 epochs, best epoch {run.best_epoch}, val_accuracy ")


def test_loaded_model_describes_itself(run: sedensenet.api.TrainResult) -> None:
    from IPython.lib.pretty import pretty

    model = sedensenet.load_model(run.run_dir)
    text = pretty(model)
    assert text.splitlines()[0].startswith("DenseNet 'se_densenet_tiny': blocks [2, 2], growth rate 4")
    assert f"classes: {list(CLASSES)}" in text
    assert f"checkpoint: epoch {run.best_epoch}, val_loss " in text and "images resized to 16x16" in text
    assert repr(model).startswith("DenseNet(\n  (features)")  # print(model) is still PyTorch's tree


def test_predictions_show_as_a_table(run: sedensenet.api.TrainResult, data: Path) -> None:
    files = [data / CLASSES[0] / "img 0.png", data / "missing.png"]
    preds = sedensenet.predict(run.run_dir, files, top_k=2)
    assert isinstance(preds, Predictions) and isinstance(preds[0], Prediction)
    lines = repr(preds).splitlines()
    assert lines[0] == "2 predictions" and lines[1].split() == ["path", "label", "probability", "top-k", "error"]
    assert repr(preds[0]).startswith(f"Prediction({str(files[0])!r}: ")
    assert repr(preds[1]).startswith(f"Prediction({str(files[1])!r}, error=")
    assert "<td>" + CLASSES[0] in preds._repr_html_() or "<td>" + CLASSES[1] in preds._repr_html_()


def test_evaluation_report_repr_and_tables() -> None:
    report = compute_metrics([0, 1, 1, 0], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], ["狗", "猫"])
    assert repr(report) == (
        "ClassificationReport(accuracy=0.5000, balanced_accuracy=0.5000, roc_auc=0.7500, classes=2, samples=4)"
    )
    from IPython.lib.pretty import pretty

    text = pretty(report)
    assert text.splitlines()[-4:] == [
        "confusion matrix  pred 狗  pred 猫",  # 狗 and 猫 are two columns wide on a terminal
        "----------------  -------  -------",
        "true 狗" + " " * 17 + "1" + " " * 8 + "1",
        "true 猫" + " " * 17 + "1" + " " * 8 + "1",
    ]
    assert "<th>pred 猫</th>" in report._repr_html_()


def test_table_aligns_wide_characters_and_escapes_html() -> None:
    table = Table(["class", "n"], [["猫", 1200], ["<b>", 3]], title="t", notes=["a & b"])
    assert str(table) == "t\nclass      n\n-----  -----\n猫     1,200\n<b>        3\na & b"
    html = table._repr_html_()
    assert "&lt;b&gt;" in html and "a &amp; b" in html and '<td style="text-align: right">1,200</td>' in html
