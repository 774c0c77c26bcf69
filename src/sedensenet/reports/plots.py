"""Training curves: per-epoch accuracy and loss (the tutorial's figure, in a file or inline) and runs compared.

The canvas (pyplot-free figures, CJK fallback, atomic PNG writes) is :mod:`sedensenet.reports.figures`; the
figures that score a classifier are in :mod:`.diagnostic_plots`, those that show why it decided in
:mod:`.explain_plots`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from sedensenet.columns import METRICS, PANELS
from sedensenet.reports.figures import (
    InlineFigure,
    Margins,
    figure_writer,
    missing_glyphs_silenced,
    new_figure,
    save_figure,
)


def _needs_markers(values: np.ndarray) -> bool:
    """True when a finite point has no finite neighbour, so a line alone would not show it."""
    finite = np.isfinite(values)
    before = np.concatenate([[False], finite[:-1]])
    after = np.concatenate([finite[1:], [False]])
    return bool(np.any(finite & ~before & ~after))


def _plot_series(ax: Axes, values: Sequence[float] | None, label: str) -> bool:
    """Plot one per-epoch series (epochs from 1); skip it when missing or all NaN. Returns whether drawn."""
    if values is None:
        return False
    y = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if not np.isfinite(y).any():
        return False
    x = np.arange(1, len(y) + 1)
    ax.plot(x, y, label=label, marker="o" if _needs_markers(y) else None, markersize=4)
    return True


def _history_series(history: dict[str, Sequence[float]], key: str) -> Sequence[float] | None:
    aliases = {"accuracy": "acc", "val_accuracy": "val_acc"}  # the names older Keras versions used
    if key in history:
        return history[key]
    return history.get(aliases.get(key, key))


CURVES_MARGINS = Margins(left=0.55, between=0.6)
"""The curves' panels have no axis label on the left, only tick labels."""


def curves_figure(
    history: dict[str, Sequence[float]], best_epoch: int | None = None, title: str | None = None,
    *, ranking: bool = False,
) -> InlineFigure:  # fmt: skip
    """The tutorial's figure, 12 x 4 inches: accuracy (left) and loss (right), training vs validation, per epoch;
    with ``ranking`` (multi-label runs) a third panel, 18 x 4 inches, of validation AUROC and mAP.

    Args:
        history: per-epoch lists under ``accuracy``, ``val_accuracy``, ``loss``, ``val_loss``; any may
            be missing or hold NaN (not measured that epoch): what exists is drawn.
        best_epoch: 1-based epoch to mark with a dashed vertical line.
        title: an optional title above both panels.
    """
    panels = {k: v for k, v in PANELS.items() if ranking or k != "ranking"}
    fig = new_figure((6 * len(panels), 4), constrained=False, figure=InlineFigure)
    for index, (panel, (name, legend_loc)) in enumerate(panels.items(), start=1):
        ax = fig.add_subplot(1, len(panels), index)
        drawn = False
        for c in (c for c in METRICS if c.panel == panel):
            label = c.legend or f"{'Validation' if c.split == 'val' else 'Training'} {name}"
            drawn |= _plot_series(ax, _history_series(history, c.name), label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
        else:
            ax.legend(loc=legend_loc)
        ax.set_title(f"Validation {name}" if panel == "ranking" else f"Training and Validation {name}", y=1.0)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    CURVES_MARGINS.apply(fig, titled=bool(title))
    return fig


@figure_writer
def plot_curves(
    history: dict[str, Sequence[float]],
    path: str | os.PathLike,
    best_epoch: int | None = None,
    title: str | None = None,
    *,
    ranking: bool = False,
) -> Path:
    """Write :func:`curves_figure` as a PNG (1200 x 400 pixels; 1800 with ``ranking``) to ``path``."""
    return save_figure(curves_figure(history, best_epoch=best_epoch, title=title, ranking=ranking), path)


def plot_history(source: Any, best_epoch: int | None = None, title: str | None = None) -> InlineFigure:
    """The curves of a run as a Figure to show inline: ``sedensenet.plot_history(result)``.

    Args:
        source: what :func:`sedensenet.train` returned, its ``history`` (Keras-shaped, or a Keras ``History``),
            a ``history.history``-style dict, a run folder or a ``history.csv`` file.
        best_epoch: the epoch to mark; taken from ``source.best_epoch`` when it has one.
        title: an optional title above both panels.
    """
    from sedensenet.reports.run import read_history_csv

    if best_epoch is None:
        best_epoch = getattr(source, "best_epoch", None) or None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        csv = path / "history.csv" if path.is_dir() else path
        if not csv.is_file():
            raise FileNotFoundError(f"{source}: no history.csv there (pass a run folder or its history.csv)")
        rows = read_history_csv(csv)
        source = {c.name: [float(r[c.name]) for r in rows if c.name in r] for c in METRICS if c.panel}
    while not isinstance(source, dict) and hasattr(source, "history"):
        source = source.history  # TrainResult -> History -> dict, Keras' History -> dict
    if not isinstance(source, dict):
        raise TypeError(
            f"plot_history takes a training result, a history dict, a run folder or a history.csv, "
            f"not {type(source).__name__}"
        )
    with missing_glyphs_silenced():
        return curves_figure(source, best_epoch=best_epoch, title=title)


@figure_writer
def plot_history_comparison(
    curves: dict[str, Sequence[float]],
    path: str | os.PathLike,
    ylabel: str = "validation accuracy",
) -> Path:
    """Draw one line per run (label -> per-epoch values) on shared axes, epochs from 1.

    Args:
        curves: label -> per-epoch values (NaN allowed).
        path: where the PNG goes.
        ylabel: what the values are.

    Returns:
        The path written.
    """
    fig = new_figure((8, 5), constrained=False)
    ax = fig.add_subplot()
    drawn = [_plot_series(ax, values, str(label)) for label, values in curves.items()]
    if any(drawn):
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Comparison: {ylabel}", y=1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    Margins().apply(fig)
    return save_figure(fig, path)
