"""Figures that show why a model decided: the images it got most wrong (top losses), where it looked (inputs
beside their Grad-CAM overlays), how its SE gates weigh each channel per class, and what it decided on each image
beside its probabilities (a prediction result's ``plot()``)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sedensenet.reports.figures import InlineFigure, Margins, figure_writer, new_figure, save_figure

IMAGE_GRID = Margins(left=0.1, right=0.1, bottom=0.1, top=0.55, between=0.2, between_rows=0.55)
"""An image per cell under a title of up to three lines at 9 points (the top losses, the data check's montage)."""


def _grid_figure(
    count: int, ncols: int, cell: tuple[float, float], *, figure: type[Figure] = Figure, constrained: bool = True
) -> tuple[Figure, int, int]:
    """A figure (of class ``figure``: :class:`InlineFigure` to show inline) sized for ``count`` cells in rows of
    ``ncols``, laid out by constrained layout or by the caller (see :func:`new_figure`); with no cells, one saying
    so (rows = 0)."""
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    cols = min(ncols, max(count, 1))
    rows = math.ceil(count / cols)
    size = (4, 2) if count == 0 else (cell[0] * cols, cell[1] * rows)
    fig = new_figure(size, constrained=constrained, figure=figure)
    if count == 0:
        fig.text(0.5, 0.5, "No images to show", ha="center", va="center")
    return fig, rows, cols


@figure_writer
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
    fig, rows, cols = _grid_figure(len(images), ncols, (2.8, 3.2), constrained=False)
    if not rows:
        return save_figure(fig, path)
    for index, (image, title) in enumerate(zip(images, titles, strict=True)):
        ax = fig.add_subplot(rows, cols, index + 1)
        array = _displayable(image)
        if array.ndim == 2:
            vmax = 255 if array.dtype == np.uint8 else 1.0
            ax.imshow(array, cmap="gray", vmin=0, vmax=vmax)
        else:
            ax.imshow(array)
        ax.set_title(str(title), fontsize=9, y=1.0)
        ax.axis("off")
    IMAGE_GRID.apply(fig, rows=rows)
    return save_figure(fig, path)


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


def _thumbnail(image: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Every ``step``-th pixel so the longer side is at most ``max_side`` (keeps the figure's memory small)."""
    array = _displayable(image)
    step = max(1, math.ceil(max(array.shape[:2]) / max_side))
    return array[::step, ::step]


@figure_writer
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
        return save_figure(fig, path)
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
    return save_figure(fig, path)


@figure_writer
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
    fig = new_figure((12, 2.0 + 0.7 * n))
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
    return save_figure(fig, path)


@dataclass
class PredictionCell:
    """One image of :func:`predictions_figure`: the picture, its caption and the probabilities drawn as bars."""

    image: np.ndarray | None
    """HxWxC or HxW, uint8 or float 0-1; None for a file that could not be read (the caption says why)."""
    title: str
    scores: dict[str, float] = field(default_factory=dict)
    """Bar per name: every label's probability (multi-label) or the top-k classes' (single-label)."""
    marked: Sequence[str] = ()
    """The names decided (drawn in colour; the others grey)."""
    thresholds: dict[str, float] | None = None
    """Multi-label: each label's threshold, marked on its bar."""


def predictions_figure(cells: Sequence[PredictionCell], ncols: int = 2) -> InlineFigure:
    """Each image beside a bar per label (class) of its probabilities, the decided ones in colour and each label's
    threshold marked; a Figure that shows inline in Jupyter (``sedensenet.predict(...).plot()``)."""
    bars = max((len(c.scores) for c in cells), default=1)
    fig, rows, cols = _grid_figure(len(cells), ncols, (6.4, max(2.2, 0.9 + 0.28 * bars)), figure=InlineFigure)
    if not rows:
        return fig
    subfigs = fig.subfigures(rows, cols, squeeze=False)
    for index, cell in enumerate(cells):
        sub = subfigs[index // cols][index % cols]
        picture, chart = sub.subplots(1, 2, width_ratios=[1, 1.4])
        if cell.image is not None:
            shown = _thumbnail(cell.image)
            picture.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        picture.axis("off")
        if cell.scores:
            _probability_bars(chart, cell)
        else:
            chart.axis("off")
        sub.suptitle(cell.title, fontsize=9)
    for index in range(len(cells), rows * cols):  # empty cells of the last row
        subfigs[index // cols][index % cols].set_visible(False)
    return fig


def _probability_bars(ax: Axes, cell: PredictionCell) -> None:
    names = list(cell.scores)
    y = np.arange(len(names))
    colours = ["tab:blue" if n in cell.marked else "0.75" for n in names]
    ax.barh(y, [cell.scores[n] for n in names], color=colours, height=0.7)
    for i, name in enumerate(names):
        if cell.thresholds is not None and name in cell.thresholds:
            ax.vlines(cell.thresholds[name], i - 0.42, i + 0.42, color="black", linewidth=1.5)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()  # the first label on top
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("probability" + (" (| threshold)" if cell.thresholds else ""), fontsize=8)
