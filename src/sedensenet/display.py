"""Tables for people: one object that prints as aligned text and renders as HTML in Jupyter.

Results that a notebook shows (a run's epochs, predictions, a model's stages, an evaluation) hand their rows to
:class:`Table`, so ``print(x)``, the REPL and Jupyter all show the same table. Nothing here imports the rest of
the package.
"""

from __future__ import annotations

import html
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """Rows under a header, with an optional title above and notes below; numbers are right-aligned."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    title: str = ""
    notes: Sequence[str] = field(default_factory=list)

    def __str__(self) -> str:
        cells = [[str(h) for h in self.header]] + [[format_cell(v) for v in row] for row in self.rows]
        widths = [max(display_width(r[i]) for r in cells) for i in range(len(self.header))]
        numeric = [all(_is_number(row[i]) for row in self.rows) and bool(self.rows) for i in range(len(widths))]
        lines = [self.title] if self.title else []
        for n, row in enumerate(cells):
            lines.append("  ".join(_pad(c, widths[i], right=numeric[i]) for i, c in enumerate(row)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join([*lines, *self.notes])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(str(h))}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td{_align(v)}>{esc(format_cell(v))}</td>" for v in row) + "</tr>" for row in self.rows
        )
        title = f"<p><b>{esc(self.title)}</b></p>" if self.title else ""
        notes = "".join(f"<br>{esc(n)}" for n in self.notes)
        notes = f"<p>{notes[4:]}</p>" if notes else ""
        return f"<div>{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}</div>"


def format_cell(value: Any) -> str:
    """Floats to 4 decimals (NaN as an empty cell), integers with thousands separators, the rest as text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: East Asian wide characters (Chinese class names) count as two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - display_width(text))
    return fill + text if right else text + fill


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _align(value: Any) -> str:
    return ' style="text-align: right"' if _is_number(value) else ""
