"""The figures written per run take fixed (or, for class names, measured) margins instead of constrained layout
(:class:`figures.Margins`): every text of theirs lies inside the figure, and no tick label, axis label or title
overlaps another axes'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from sedensenet.reports import diagnostic_plots, explain_plots, plots

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 60)
SCORES = np.clip(LABELS * 0.5 + RNG.random(60) * 0.6, 0, 1)
HISTORY = {"accuracy": [0.5, 0.7, 0.85, 0.9], "val_accuracy": [0.45, 0.6, 0.8, 0.88],
           "loss": [2.31, 1.2, 0.6, 0.3], "val_loss": [2.5, 1.4, 0.7, 0.4]}  # fmt: skip


def _drawn(module, call, monkeypatch: pytest.MonkeyPatch) -> dict:  # noqa: ANN001
    """What the figure ``call`` writes holds when drawn as written (``save_figure`` clears it afterwards): its
    layout engine, size in pixels, every visible text with its box and axes, and the boxes of the axes shown."""
    seen: dict = {}
    real_save = module.save_figure

    def spy(fig: Figure, path: Path) -> Path:
        fig.canvas.draw()
        shown = [ax for ax in fig.axes if ax.axison]
        texts = [(t, None) for t in [*fig.texts, *([fig._suptitle] if fig._suptitle else [])]]
        for ax in fig.axes:  # what each axes draws: tick labels of the ticks in view, labels, titles, legend
            own = [ax.title, *ax.texts, *(ax.get_legend().get_texts() if ax.get_legend() else [])]
            if ax.axison:
                own += [*_in_view(ax.get_xticks(), ax.get_xticklabels(), ax.get_xlim()),
                        *_in_view(ax.get_yticks(), ax.get_yticklabels(), ax.get_ylim()),
                        ax.xaxis.label, ax.yaxis.label]  # fmt: skip
            texts += [(t, ax) for t in own]
        drawn = [(t.get_text(), t.get_window_extent(), ax) for t, ax in texts if t.get_visible() and t.get_text()]
        seen.update(engine=fig.get_layout_engine(), size=fig.canvas.get_width_height(), texts=drawn,
                    axes=[(ax, ax.get_window_extent()) for ax in shown])  # fmt: skip
        return real_save(fig, path)

    monkeypatch.setattr(module, "save_figure", spy)
    call()
    return seen


def _in_view(ticks: np.ndarray, labels: list, limits: tuple[float, float]) -> list:
    """The labels of the ticks matplotlib draws: those within the axis' limits (it makes a few beyond them)."""
    low, high = sorted(limits)
    span = (high - low) * 1e-9
    return [label for tick, label in zip(ticks, labels, strict=True) if low - span <= tick <= high + span]


CASES = {
    "curves": (plots, lambda p: plots.plot_curves(HISTORY, p, best_epoch=3)),
    "curves, titled, large values": (plots, lambda p: plots.plot_curves(
        {k: [v * 12345 for v in vs] for k, vs in HISTORY.items()}, p, best_epoch=3, title="SE-DenseNet-121 运行")),
    "curves with ranking": (plots, lambda p: plots.plot_curves(
        {**HISTORY, "val_auroc": [0.6, 0.7, 0.8, 0.9], "val_map": [0.5, 0.6, 0.7, 0.8]}, p, ranking=True)),
    "comparison": (plots, lambda p: plots.plot_history_comparison({"a": [0.1, 0.5], "b": [0.2, 0.6]}, p)),
    "roc": (diagnostic_plots, lambda p: diagnostic_plots.plot_roc(LABELS, SCORES, p, "恶性 malignant")),
    "pr": (diagnostic_plots, lambda p: diagnostic_plots.plot_pr(LABELS.astype(bool), SCORES, p, "malignant", 0.5)),
    "reliability": (diagnostic_plots, lambda p: diagnostic_plots.plot_reliability(
        LABELS, np.stack([1 - SCORES, SCORES], 1), p, uncalibrated=np.stack([1 - SCORES**2, SCORES**2], 1))),
    "confusion matrix": (diagnostic_plots, lambda p: diagnostic_plots.plot_confusion_matrix(
        [[5, 3], [2, 9]], ["狗", "猫"], p)),
    "confusion matrix, long names": (diagnostic_plots, lambda p: diagnostic_plots.plot_confusion_matrix(
        [[1200, 3, 0], [2, 9, 0], [0, 0, 4]], ["basal cell carcinoma", "melanocytic nevus 色素痣", "x"], p)),
    "confusion matrix, 12 classes": (diagnostic_plots, lambda p: diagnostic_plots.plot_confusion_matrix(
        np.eye(12, dtype=int) * 7 + 1, [f"finding {i} of the chest X-ray" for i in range(12)], p, normalize=True)),
    "top losses": (explain_plots, lambda p: explain_plots.plot_top_losses(
        [RNG.integers(0, 255, (40, 30, 3), dtype=np.uint8)] * 6, ["true: 狗\npred: 猫 (0.97)\nloss 3.51"] * 6, p)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_fixed_margins_keep_every_text_inside_and_clear_of_other_axes(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, call = CASES[case]
    seen = _drawn(module, lambda: call(tmp_path / "figure.png"), monkeypatch)
    assert seen["engine"] is None  # fixed margins: no constrained layout to pay for on every draw
    width, height = seen["size"]
    assert len(seen["texts"]) >= 5
    for text, box, own in seen["texts"]:
        inside = box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5
        assert inside, f"{case}: {text!r} at {box.bounds} leaves the {width}x{height} figure"
        for ax, axes_box in seen["axes"]:
            if own is not None and ax is not own:
                assert not box.overlaps(axes_box), f"{case}: {text!r} of one panel overlaps another"
