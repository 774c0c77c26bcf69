"""The canvas every figure of the run folder is drawn on: a pyplot-free ``Figure``, the CJK font fallback, the
atomic PNG write and the silencing of missing-glyph warnings, shared by the themed plot modules.

Every figure is a ``matplotlib.figure.Figure`` drawn on its own ``FigureCanvasAgg``: pyplot is never imported, so
there is no global figure registry, no backend switch in a user's notebook, and nothing to close. Class names may
be Chinese or use other scripts: when a CJK-capable font is installed it is added as a fallback to every text;
otherwise the missing glyphs render as boxes, without warnings.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
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


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A constrained-layout Figure of ``figsize`` inches at :data:`DPI`, on its own Agg canvas."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


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
