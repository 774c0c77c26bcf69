"""Every figure is written as a PNG of the expected size, also with Chinese names and sparse data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sedensenet.reports import (
    diagnostic_plots,
    figures,
    plot_confusion_matrix,
    plot_curves,
    plot_history_comparison,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_top_losses,
    plots,
)

HISTORY = {
    "accuracy": [0.5, 0.6, 0.7, 0.8],
    "val_accuracy": [0.45, 0.55, 0.65, 0.6],
    "loss": [1.0, 0.8, 0.6, 0.4],
    "val_loss": [1.1, 0.9, 0.7, 0.8],
}


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    "history",
    [
        HISTORY,
        {"accuracy": [0.5], "val_accuracy": [0.4], "loss": [0.9], "val_loss": [1.0]},  # one epoch
        {"accuracy": [0.5, 0.6, 0.7], "loss": [0.9, 0.8, 0.7]},  # no validation at all
        {
            "accuracy": [0.5, 0.6, 0.7],
            "val_accuracy": [float("nan")] * 3,
            "loss": [0.9, 0.8, 0.7],
            "val_loss": [float("nan"), 0.7, float("nan")],
        },  # validation NaN or only now and then
        {},
    ],
    ids=["full", "one-epoch", "no-val", "nan-val", "empty"],
)
def test_plot_curves_is_12_by_4_inches(tmp_path: Path, history: dict[str, list[float]]) -> None:
    path = plot_curves(history, tmp_path / "curves.png", best_epoch=1, title="运行 train")
    assert path == tmp_path / "curves.png"
    assert _png_size(path) == (12 * figures.DPI, 4 * figures.DPI)
    assert _no_temp_files(tmp_path)


def test_plot_curves_panels_follow_the_tutorial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    real_save = plots.save_figure

    def spy(fig, path):  # inspect the figure before it is written and cleared
        figures.append(
            [(ax.get_title(), [line.get_label() for line in ax.get_lines()], ax.get_legend()._loc) for ax in fig.axes]
        )
        xs = fig.axes[0].get_lines()[0].get_xdata()
        figures.append(list(xs))
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    plot_curves(HISTORY, tmp_path / "c.png", best_epoch=3)
    (left, right), xs = figures
    assert left[0] == "Training and Validation Accuracy"
    assert left[1] == ["Training Accuracy", "Validation Accuracy", "best epoch 3"]
    assert right[0] == "Training and Validation Loss"
    assert right[1] == ["Training Loss", "Validation Loss", "best epoch 3"]
    assert (left[2], right[2]) == (4, 1)  # matplotlib codes: 4 = lower right, 1 = upper right
    assert xs == [1, 2, 3, 4]  # epochs numbered from 1


def test_markers_only_where_a_line_cannot_show_a_point() -> None:
    nan = float("nan")
    assert plots._needs_markers(np.array([0.5]))
    assert plots._needs_markers(np.array([nan, 0.5, nan, 0.6]))
    assert not plots._needs_markers(np.array([0.5, 0.6, nan]))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("normalize", [False, True])
def test_plot_confusion_matrix_with_chinese_classes(tmp_path: Path, normalize: bool) -> None:
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # the last class has no samples
    path = plot_confusion_matrix(cm, ["猫", "狗", "兔子"], tmp_path / "cm.png", normalize=normalize)
    width, height = _png_size(path)
    assert width > height > 300


@pytest.mark.filterwarnings("error")
def test_plot_confusion_matrix_many_classes(tmp_path: Path) -> None:
    n = 30
    cm = np.random.default_rng(0).integers(0, 20, size=(n, n))
    path = plot_confusion_matrix(cm, [f"class_{i}" for i in range(n)], tmp_path / "cm.png", normalize=True)
    assert _png_size(path)[0] > 1000


def test_plot_confusion_matrix_rejects_mismatched_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="match classes"):
        plot_confusion_matrix(np.eye(3), ["a", "b"], tmp_path / "cm.png")


def test_cell_text_contrasts_with_the_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    colours = {}

    def spy(fig, path):
        for text in fig.axes[0].texts:
            colours[text.get_text()] = text.get_color()
        return path

    monkeypatch.setattr(diagnostic_plots, "save_figure", spy)
    plot_confusion_matrix([[100, 0], [1, 99]], ["a", "b"], tmp_path / "cm.png")
    assert colours["100"] == "white"  # dark blue cell
    assert colours["0"] == "black"  # near-white cell


@pytest.mark.filterwarnings("error")
def test_plot_roc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = []
    real_save = diagnostic_plots.save_figure

    def spy(fig, path):
        labels.extend(t.get_text() for t in fig.axes[0].get_legend().get_texts())
        return real_save(fig, path)

    monkeypatch.setattr(diagnostic_plots, "save_figure", spy)
    path = plot_roc([0, 0, 1, 1, 1], [0.1, 0.6, 0.7, 0.2, 0.9], tmp_path / "roc.png", pos_label_name="狗")
    assert _png_size(path) == (550, 500)
    assert "狗 (AUC = 0.833)" in labels
    assert any(label.startswith("chance") for label in labels)


@pytest.mark.filterwarnings("error")
def test_plot_pr_marks_the_operating_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real_save = diagnostic_plots.save_figure

    def spy(fig, path):
        ax = fig.axes[0]
        seen["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
        point = next(line for line in ax.get_lines() if line.get_label().startswith("threshold"))
        seen["point"] = (float(point.get_xdata()[0]), float(point.get_ydata()[0]))
        return real_save(fig, path)

    monkeypatch.setattr(diagnostic_plots, "save_figure", spy)
    positive = [False, False, True, True, True]
    path = plot_pr(positive, [0.1, 0.6, 0.7, 0.2, 0.9], tmp_path / "pr.png", pos_label_name="狗", threshold=0.5)
    assert _png_size(path) == (550, 500)
    # Called at 0.5: 0.6 (a negative), 0.7 and 0.9: 2 of 3 positives found, 2 of 3 calls right.
    assert seen["point"] == pytest.approx((2 / 3, 2 / 3))
    # Ranked 0.9 P, 0.7 P, 0.6 N, 0.2 P: AP = (1 + 1 + 3/4) / 3.
    assert seen["labels"] == ["chance (prevalence 0.600)", "狗 (AP = 0.917)", "threshold 0.500"]


@pytest.mark.filterwarnings("error")
def test_plot_reliability_before_and_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = []

    def spy(fig, path):
        labels.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        return path

    monkeypatch.setattr(diagnostic_plots, "save_figure", spy)
    # Top-label confidences 0.9 and 0.8, both right, in two of the 15 bins: ECE = (0.1 + 0.2) / 2.
    calibrated = np.array([[0.9, 0.1], [0.2, 0.8]])
    plot_reliability([0, 1], calibrated, tmp_path / "cal.png")
    plot_reliability([0, 1], calibrated, tmp_path / "cal.png", uncalibrated=np.array([[0.6, 0.4], [0.4, 0.6]]))
    assert labels == [
        ["perfect calibration", "model (ECE = 0.150)"],
        ["perfect calibration", "before scaling (ECE = 0.400)", "after scaling (ECE = 0.150)"],
    ]


@pytest.mark.filterwarnings("error")
def test_plot_roc_with_one_class_does_not_crash(tmp_path: Path) -> None:
    assert plot_roc([1, 1, 1], [0.2, 0.5, 0.9], tmp_path / "roc.png", pos_label_name="pos").exists()


@pytest.mark.filterwarnings("error")
def test_plot_top_losses_mixed_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, size=(32, 40, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(28, 28), dtype=np.uint8),  # grayscale HxW
        rng.integers(0, 256, size=(28, 28, 1), dtype=np.uint8),  # grayscale HxWx1
        rng.random((20, 20, 3)),  # float in [0, 1]
        rng.integers(0, 256, size=(16, 16, 4), dtype=np.uint8),  # RGBA
    ]
    titles = [f"true: 猫\npred: 狗 (0.9{i})\nloss {i + 1.5:.2f}" for i in range(len(images))]
    path = plot_top_losses(images, titles, tmp_path / "top.png", ncols=4)
    width, height = _png_size(path)
    assert (width, height) == (round(2.8 * 4 * figures.DPI), round(3.2 * 2 * figures.DPI))


def test_plot_top_losses_without_images(tmp_path: Path) -> None:
    assert _png_size(plot_top_losses([], [], tmp_path / "top.png")) == (4 * figures.DPI, 2 * figures.DPI)


def test_plot_top_losses_rejects_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="titles"):
        plot_top_losses([np.zeros((4, 4), dtype=np.uint8)], [], tmp_path / "top.png")


@pytest.mark.filterwarnings("error")
def test_plot_history_comparison(tmp_path: Path) -> None:
    curves = {"densenet121": [0.5, 0.6, 0.7], "se_densenet121 (SE)": [0.55, float("nan"), 0.75], "单轮": [0.4]}
    path = plot_history_comparison(curves, tmp_path / "sub" / "compare.png")
    assert _png_size(path) == (8 * figures.DPI, 5 * figures.DPI)


@pytest.mark.filterwarnings("ignore:Glyph")  # drawn directly here, outside the plot functions' guard
def test_font_fallback_reaches_every_text() -> None:
    fig = figures.new_figure((4, 3))
    ax = fig.add_subplot()
    ax.set_title("猫")
    ax.set_xticks([0, 1], ["猫", "狗"])
    ax.plot([0, 1], [0, 1], label="狗")
    ax.legend()
    figures.apply_font_fallback(fig, "DejaVu Serif")
    fig.canvas.draw()  # tick labels are (re)made at draw time
    texts = [ax.title, *ax.get_xticklabels(), *ax.get_yticklabels(), *ax.get_legend().get_texts()]
    assert all(text.get_fontfamily()[-1] == "DejaVu Serif" for text in texts)


def test_cjk_font_is_used_when_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No CJK font may be installed here: pretend one is, to run the path that applies it.
    monkeypatch.setattr(figures, "find_cjk_font", lambda: "DejaVu Serif")
    assert plot_confusion_matrix([[1, 0], [0, 1]], ["猫", "狗"], tmp_path / "cm.png").exists()


def test_find_cjk_font_returns_an_installed_family_or_none() -> None:
    from matplotlib import font_manager

    family = figures.find_cjk_font()
    assert family is None or family in {f.name for f in font_manager.fontManager.ttflist}


def test_plotting_leaves_pyplot_alone() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sedensenet.reports as r, pathlib, tempfile;"
        "d = pathlib.Path(tempfile.mkdtemp());"
        "r.plot_curves({'loss': [1.0, 0.5]}, d / 'c.png');"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
