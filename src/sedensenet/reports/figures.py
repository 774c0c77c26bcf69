"""The canvas every figure of the run folder is drawn on: a pyplot-free ``Figure``, the CJK font fallback, the
atomic PNG write and the silencing of missing-glyph warnings, shared by the themed plot modules.

Every figure is a ``matplotlib.figure.Figure`` drawn on its own ``FigureCanvasAgg``: pyplot is never imported, so
there is no global figure registry, no backend switch in a user's notebook, and nothing to close. Class names may
be Chinese or use other scripts: when a CJK-capable font is installed it is added as a fallback to every text;
otherwise the missing glyphs render as boxes, without warnings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from matplotlib import font_manager, rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from sedensenet.fileio import atomic_write

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


@contextlib.contextmanager
def missing_glyphs_silenced() -> Iterator[None]:
    """Silence matplotlib's missing-glyph warnings (only those) while drawing, one thread at a time."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GLYPH_WARNING, category=UserWarning)
        yield


def figure_writer(func: _F) -> _F:
    """Decorate a function that draws and writes a figure: it runs with missing-glyph warnings silenced."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with missing_glyphs_silenced():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(figsize: tuple[float, float], *, constrained: bool = True, figure: type[Figure] = Figure) -> Figure:
    """A Figure (of class ``figure``) of ``figsize`` inches at :data:`DPI`, on its own Agg canvas, laid out by
    constrained layout or, with ``constrained=False``, by the caller (:class:`Margins`).

    Constrained layout measures every tick label before each draw: 30-40% of drawing a figure. Most of the figures
    written per run (the curves after every epoch, the ROC, precision-recall and reliability diagrams) have text of
    known extent around the axes, so they take fixed margins instead, and their titles a fixed height
    (``set_title(..., y=1.0)``: else each draw measures the axis below the title for overlap).
    """
    fig = figure(figsize=figsize, dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


@dataclasses.dataclass(frozen=True)
class Margins:
    """Room around a figure's grid of axes, in inches, for text of known size: by default tick labels of up to
    about six characters and an axis label on the left and bottom, and a title on top, at matplotlib's default
    font sizes."""

    left: float = 0.7
    right: float = 0.15
    bottom: float = 0.55
    top: float = 0.38
    between: float = 0.75
    """Between two columns of axes: the next one's tick labels."""
    between_rows: float = 0.75
    """Between two rows of axes: the lower one's title and the upper one's labels."""
    suptitle: float = 0.3
    """Added on top when the figure has a title of its own."""

    def apply(self, fig: Figure, *, rows: int = 1, titled: bool = False) -> None:
        """Place ``fig``'s axes, a grid of ``rows`` rows, within these margins (``titled``: with room for a figure
        title)."""
        width, height = fig.get_size_inches()
        columns = max(1, math.ceil(len(fig.axes) / rows))
        top = self.top + (self.suptitle if titled else 0.0)
        axes_width = (width - self.left - self.right - self.between * (columns - 1)) / columns
        axes_height = (height - self.bottom - top - self.between_rows * (rows - 1)) / rows
        fig.subplots_adjust(left=self.left / width, right=1 - self.right / width, bottom=self.bottom / height,
                            top=1 - top / height, wspace=self.between / axes_width,
                            hspace=self.between_rows / axes_height)  # fmt: skip


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically as a PNG at :data:`DPI` (CJK fallback applied when a font exists), then clear it;
    returns the path written."""
    family = find_cjk_font()
    if family is not None:
        apply_font_fallback(fig, family)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        fig.clear()


def apply_font_fallback(fig: Figure, family: str) -> None:
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


def text_families() -> list[str]:
    """The font families every text is drawn in: the default ones, then the CJK fallback when one is installed
    (what :func:`save_figure` gives each text), for measuring text before it is drawn."""
    family = find_cjk_font()
    return [*_default_families(), *([family] if family else [])]


def _default_families() -> list[str]:
    family = rcParams["font.family"]
    return list(family) if isinstance(family, (list, tuple)) else [family]


class InlineFigure(Figure):
    """A Figure that Jupyter shows as a PNG even when pyplot was never imported (it has ``_repr_png_``).

    Without pyplot no inline backend registers a display for figures, and a bare Figure shows as the text
    ``<Figure size 1200x400 with 2 Axes>``.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        with missing_glyphs_silenced():
            self.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()
