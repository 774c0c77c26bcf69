"""Figures for the run folder: training curves, confusion matrix, ROC, top losses, run comparison.

Every figure is a ``matplotlib.figure.Figure`` drawn on its own ``FigureCanvasAgg``: pyplot is never
imported, so there is no global figure registry, no backend switch in a user's notebook, and nothing
to close. Files are written atomically as PNG.

Class names may be Chinese or use other scripts: when a CJK-capable font is installed it is added as
a fallback to every text; otherwise the missing glyphs render as boxes, without warnings.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from matplotlib import font_manager, rcParams
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from sedensenet.columns import METRICS, PANELS
from sedensenet.fileio import atomic_write
from sedensenet.reports.metrics import normalize_confusion_matrix

logger = logging.getLogger(__name__)

DPI = 100
"""Resolution of every figure: the curves figure (12 x 4 inches) is 1200 x 400 pixels."""

CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans CJK TC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "Hiragino Sans GB",
    "Arial Unicode MS",
    "Droid Sans Fallback",
    "AR PL UMing CN",
)
"""Font families tried, in order, as the fallback for CJK text."""

_GLYPH_WARNING = r"Glyph \d+ .*missing from (current )?font"
# warnings.catch_warnings swaps the process-wide filter list; the lock keeps two of our own plotting
# threads from restoring each other's filters in the wrong order.
_WARNINGS_LOCK = threading.Lock()
_F = TypeVar("_F", bound=Callable[..., Path])


@functools.lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """Return the family name of an installed CJK-capable font, or None when there is none."""
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    for family in CJK_FONTS:
        if family in installed:
            logger.debug("using %s for CJK text", family)
            return family
    return None


def _figure_writer(func: _F) -> _F:
    """Run a plotting function with missing-glyph warnings silenced (only those)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    family = find_cjk_font()
    if family is not None:
        _apply_font_fallback(fig, family)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        fig.clear()


def _apply_font_fallback(fig: Figure, family: str) -> None:
    """Give every text the default font first and ``family`` as fallback (per character, matplotlib >= 3.6)."""
    families = [*_default_families(), family]
    for ax in fig.axes:
        try:
            ax.tick_params(which="both", labelfontfamily=families)  # also reaches ticks made at draw time
        except (TypeError, ValueError):  # matplotlib < 3.8: set the tick labels that exist now
            for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
                label.set_fontfamily(families)
    for text in fig.findobj(Text):
        text.set_fontfamily(families)


def _default_families() -> list[str]:
    family = rcParams["font.family"]
    return list(family) if isinstance(family, (list, tuple)) else [family]


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


class InlineFigure(Figure):
    """A Figure that Jupyter shows as a PNG even when pyplot was never imported (it has ``_repr_png_``).

    Without pyplot no inline backend registers a display for figures, and a bare Figure shows as the text
    ``<Figure size 1200x400 with 2 Axes>``.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
            self.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def curves_figure(
    history: dict[str, Sequence[float]], best_epoch: int | None = None, title: str | None = None
) -> InlineFigure:
    """The tutorial's figure, 12 x 4 inches: accuracy (left) and loss (right), training vs validation, per epoch.

    Args:
        history: per-epoch lists under ``accuracy``, ``val_accuracy``, ``loss``, ``val_loss``; any may
            be missing or hold NaN (not measured that epoch): what exists is drawn.
        best_epoch: 1-based epoch to mark with a dashed vertical line.
        title: an optional title above both panels.
    """
    fig = InlineFigure(figsize=(12, 4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    for index, (panel, (name, legend_loc)) in enumerate(PANELS.items(), start=1):
        ax = fig.add_subplot(1, len(PANELS), index)
        drawn = False
        for c in (c for c in METRICS if c.panel == panel):
            label = f"{'Validation' if c.split == 'val' else 'Training'} {name}"
            drawn |= _plot_series(ax, _history_series(history, c.name), label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
        else:
            ax.legend(loc=legend_loc)
        ax.set_title(f"Training and Validation {name}")
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return fig


@_figure_writer
def plot_curves(
    history: dict[str, Sequence[float]],
    path: str | os.PathLike,
    best_epoch: int | None = None,
    title: str | None = None,
) -> Path:
    """Write :func:`curves_figure` as a PNG (1200 x 400 pixels) to ``path``; returns the path written."""
    return _save(curves_figure(history, best_epoch=best_epoch, title=title), path)


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
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
        return curves_figure(source, best_epoch=best_epoch, title=title)


@_figure_writer
def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = False,
) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) with the value in each cell.

    Args:
        cm: (C, C) counts.
        classes: the C class names.
        path: where the PNG goes.
        normalize: show each row divided by its total (recall per true class; empty rows stay 0).

    Returns:
        The path written.
    """
    counts = np.asarray(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(classes):
        raise ValueError(f"cm must be ({len(classes)}, {len(classes)}) to match classes, got shape {counts.shape}")
    if len(classes) == 0:
        raise ValueError("cannot plot a confusion matrix without classes")
    values = normalize_confusion_matrix(counts) if normalize else counts.astype(np.float64)
    n = len(classes)
    side = min(4.0 + 0.45 * n, 24.0)
    fig = _new_figure((side + 1.0, side))
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:  # beyond that the numbers are unreadable anyway
        _annotate_cells(ax, values, image, normalize, fontsize=max(5.0, 11.0 - 0.15 * n))
    rotate = n > 6 or max(len(str(c)) for c in classes) > 8
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix (normalized by true class)" if normalize else "Confusion matrix")
    return _save(fig, path)


def _annotate_cells(ax: Axes, values: np.ndarray, image: Any, normalize: bool, fontsize: float) -> None:
    for (row, col), value in np.ndenumerate(values):
        red, green, blue, _ = image.cmap(image.norm(value))
        # Relative luminance of the cell colour decides between black and white text.
        dark = 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.5
        text = f"{value:.2f}" if normalize else f"{int(round(value))}"
        ax.text(col, row, text, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")


@_figure_writer
def plot_roc(
    y_true: Sequence[int],
    scores_positive: Sequence[float],
    path: str | os.PathLike,
    pos_label_name: str,
) -> Path:
    """Draw the ROC curve of a two-class problem, with its AUC in the legend and the chance diagonal.

    Args:
        y_true: 0/1 labels, 1 being the positive class.
        scores_positive: the score (probability) of the positive class per sample.
        path: where the PNG goes.
        pos_label_name: the positive class's name, for the legend.

    Returns:
        The path written.
    """
    y = np.asarray(y_true).reshape(-1)
    scores = np.asarray(scores_positive, dtype=np.float64).reshape(-1)
    if len(y) != len(scores):
        raise ValueError(f"y_true has {len(y)} labels but scores_positive has {len(scores)} scores")
    fig = _new_figure((5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (AUC = 0.500)")
    if len(np.unique(y)) == 2 and np.all(np.isfinite(scores)):
        fpr, tpr, _ = roc_curve(y, scores, pos_label=1)
        auc = roc_auc_score(y, scores)
        ax.plot(fpr, tpr, linewidth=2, label=f"{pos_label_name} (AUC = {auc:.3f})")
    else:
        ax.text(0.5, 0.3, "ROC undefined: both classes are needed", ha="center", transform=ax.transAxes)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(f"ROC: {pos_label_name} vs rest")
    ax.legend(loc="lower right")
    return _save(fig, path)


def _grid_figure(count: int, ncols: int, cell: tuple[float, float]) -> tuple[Figure, int, int]:
    """A figure sized for ``count`` cells in rows of ``ncols``; with no cells, one saying so (rows = 0)."""
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    if count == 0:
        fig = _new_figure((4, 2))
        fig.text(0.5, 0.5, "No images to show", ha="center", va="center")
        return fig, 0, 0
    cols = min(ncols, count)
    rows = math.ceil(count / cols)
    return _new_figure((cell[0] * cols, cell[1] * rows)), rows, cols


@_figure_writer
def plot_top_losses(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike,
    ncols: int = 4,
) -> Path:
    """Draw a grid of images, each under its title (e.g. ``"true: cat\\npred: dog (0.97)\\nloss 3.51"``).

    Args:
        images: HxWxC (C = 1, 3 or 4) or HxW arrays, uint8 0-255 or float 0-1.
        titles: one title per image.
        path: where the PNG goes.
        ncols: images per row.

    Returns:
        The path written; with no images the figure says so.
    """
    if len(images) != len(titles):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles")
    fig, rows, cols = _grid_figure(len(images), ncols, (2.8, 3.2))
    if not rows:
        return _save(fig, path)
    for index, (image, title) in enumerate(zip(images, titles, strict=True)):
        ax = fig.add_subplot(rows, cols, index + 1)
        array = _displayable(image)
        if array.ndim == 2:
            vmax = 255 if array.dtype == np.uint8 else 1.0
            ax.imshow(array, cmap="gray", vmin=0, vmax=vmax)
        else:
            ax.imshow(array)
        ax.set_title(str(title), fontsize=9)
        ax.axis("off")
    return _save(fig, path)


def _displayable(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"images must be HxW or HxWxC with C in (1, 3, 4), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    return np.clip(array.astype(np.float64), 0.0, 1.0)


@_figure_writer
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
    fig = _new_figure((8, 5))
    ax = fig.add_subplot()
    drawn = [_plot_series(ax, values, str(label)) for label, values in curves.items()]
    if any(drawn):
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Comparison: {ylabel}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _thumbnail(image: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Every ``step``-th pixel so the longer side is at most ``max_side`` (keeps the figure's memory small)."""
    array = _displayable(image)
    step = max(1, math.ceil(max(array.shape[:2]) / max_side))
    return array[::step, ::step]


@_figure_writer
def plot_gradcam_grid(
    images: Sequence[np.ndarray],
    overlays: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike,
    ncols: int = 3,
) -> Path:
    """Draw each input beside its Grad-CAM overlay, the pair under one title (e.g. ``"pred: cat (0.93)"``).

    Args:
        images: the inputs, HxWxC (C = 1, 3 or 4) or HxW arrays, uint8 or float 0-1.
        overlays: one heat-map overlay per input, same formats.
        titles: one title per pair.
        path: where the PNG goes.
        ncols: pairs per row.

    Returns:
        The path written; with no images the figure says so.
    """
    if not len(images) == len(overlays) == len(titles):
        raise ValueError(f"got {len(images)} images, {len(overlays)} overlays and {len(titles)} titles")
    fig, rows, cols = _grid_figure(len(images), ncols, (4.4, 2.6))
    if not rows:
        return _save(fig, path)
    cells = fig.subfigures(rows, cols, squeeze=False)
    for index, (image, overlay, title) in enumerate(zip(images, overlays, titles, strict=True)):
        cell = cells[index // cols][index % cols]
        for ax, array in zip(cell.subplots(1, 2), (image, overlay), strict=True):
            shown = _thumbnail(array)
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
            ax.axis("off")
        cell.suptitle(str(title), fontsize=9)
    for index in range(len(images), rows * cols):  # empty cells of the last row
        cells[index // cols][index % cols].set_visible(False)
    return _save(fig, path)


@_figure_writer
def plot_se_weights(
    matrix: np.ndarray | Sequence[Sequence[float]],
    classes: Sequence[str],
    path: str | os.PathLike,
    order: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Draw mean SE gate values per class (rows) and channel (columns), and each class's deviation from the mean.

    The top panel shows the gates (0-1); the bottom panel the same cells minus the mean over classes, on a
    diverging scale, so small differences between classes stay visible next to large common gate values.

    Args:
        matrix: (num_classes, channels) mean gate values.
        classes: the row names.
        path: where the PNG goes.
        order: the channel order of the columns (e.g. most class-discriminative first); default 0..C-1.
        title: an optional title above both panels.

    Returns:
        The path written.
    """
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(classes) or values.shape[0] == 0:
        raise ValueError(f"matrix must be (len(classes)={len(classes)}, channels), got shape {values.shape}")
    columns = np.arange(values.shape[1]) if order is None else np.asarray(order, dtype=np.int64)
    shown = values[:, columns]
    deviation = shown - shown.mean(axis=0, keepdims=True)
    n = len(classes)
    fig = _new_figure((12, 2.0 + 0.7 * n))
    limit = max(float(np.abs(deviation).max()), 1e-6)
    panels = (
        (shown, "viridis", 0.0, 1.0, "mean gate"),
        (deviation, "RdBu_r", -limit, limit, "gate - mean over classes"),
    )
    for index, (data, cmap, vmin, vmax, label) in enumerate(panels, start=1):
        ax = fig.add_subplot(2, 1, index)
        image = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label=label)
        ax.set_yticks(range(n), [str(c) for c in classes])
        if len(columns) <= 48:
            ax.set_xticks(range(len(columns)), [str(c) for c in columns], fontsize=7)
        ax.set_xlabel("channel" if order is None else "channel (in the given order)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
