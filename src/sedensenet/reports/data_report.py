"""The ``check-data`` report: ``data_report.md`` for a person, ``data_report.json`` for tools, a montage PNG.

Reads a :class:`~sedensenet.data.check.DataCheck` (plain values) and writes files; it loads no image itself:
the montage's images come from the caller.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sedensenet.fileio import atomic_write_json, atomic_write_text
from sedensenet.reports.explain_plots import plot_top_losses

if TYPE_CHECKING:
    from sedensenet.data.check import DataCheck, LabelStats

MAX_ROWS = 50
"""Rows per table in the Markdown report; the JSON report lists everything."""

_SECTIONS = (
    ("train/test", "Test images that are also training images"),
    ("train/val", "Validation images that are also training images"),
    ("val/test", "Test images that are also validation images"),
    ("conflicting labels", "One image under two classes"),
    ("within class", "Copies within a class"),
)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        lines.append(f"\n… and {len(rows) - MAX_ROWS} more (all of them in data_report.json)")
    return lines + [""]


def _counts(check: DataCheck) -> list[str]:
    if check.multilabel is not None:
        return _label_counts(check, check.multilabel)
    splits = [s for s, per_class in check.counts.items() if sum(per_class.values())]
    rows = [[c] + [check.counts[s][c] for s in splits] for c in check.classes]
    rows.append(["**total**"] + [sum(check.counts[s].values()) for s in splits])
    rows.append(["largest / smallest class"] + [f"{check.imbalance.get(s, 0):g}" for s in splits])
    return ["## Images per split and class", ""] + _table(["class", *splits], rows)


def _label_counts(check: DataCheck, stats: LabelStats) -> list[str]:
    """A multi-label set: images with each label per split, ignored entries, images with no label, and how often
    two labels go together."""
    splits = [s for s in check.counts if sum(check.counts[s].values()) or stats.no_label.get(s)]
    rows = [[c] + [check.counts[s][c] for s in splits] + [stats.ignored[c]] for c in check.classes]
    rows.append(["images with no label"] + [stats.no_label[s] for s in splits] + [""])
    rows.append(["most / least common label"] + [f"{check.imbalance.get(s, 0):g}" for s in splits] + [""])
    lines = ["## Images with each label, per split", ""] + _table(["label", *splits, "ignored (uncertain or blank)"],
                                                                   rows)  # fmt: skip
    co = [[c, *stats.cooccurrence[i]] for i, c in enumerate(check.classes)]
    lines += ["## Labels together (images with both; the diagonal: images with the label)", ""]
    return lines + _table(["", *check.classes], co)


def _properties(check: DataCheck) -> list[str]:
    def spread(v: list[int]) -> str:
        return " / ".join(str(x) for x in v)

    def tally(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {n}" for k, n in d.items())

    rows = [
        [s, spread(p["width"]), spread(p["height"]), tally(p["modes"]), tally(p["formats"]), p["exif_rotated"]]
        for s, p in check.properties.items()
    ]
    header = ["split", "width min / median / max", "height min / median / max", "modes", "formats", "EXIF-rotated"]
    return ["## Image properties", ""] + _table(header, rows)


def _duplicates(check: DataCheck) -> list[str]:
    lines = [f"## Duplicates (near: perceptual hash within {check.near_distance} bits, verified on the thumbnails)", ""]
    if not check.pairs:
        return lines + ["None found.", ""]
    for where, title in _SECTIONS:
        pairs = [p for p in check.pairs if where in p["where"]]
        if not pairs:
            continue
        rows = [
            [p["a"], f"{p['a_split']} / {p['a_class']}", p["b"], f"{p['b_split']} / {p['b_class']}", p["kind"],
             p["distance"], f"{p['similarity']:.4f}"]
            for p in pairs
        ]  # fmt: skip
        header = ["file", "split / class", "copy", "split / class", "kind", "distance", "similarity"]
        lines += [f"### {title} ({len(pairs)} pair{'' if len(pairs) == 1 else 's'})", ""] + _table(header, rows)
    if check.clusters:
        lines += [f"### Clusters of more than two copies ({len(check.clusters)})", ""]
        for number, cluster in enumerate(check.clusters[:MAX_ROWS], start=1):
            names = ", ".join(f"{check.files[i].path} ({check.files[i].split})" for i in cluster)
            lines.append(f"{number}. {len(cluster)} files: {names}")
        lines.append("")
    return lines


def markdown(check: DataCheck) -> str:
    """The report as Markdown: verdicts first, then counts, properties, unusable files and duplicates."""
    total = len(check.files)
    lines = [
        f"# Data report: {check.root}",
        "",
        f"{total} usable images in {len(check.classes)} {'labels' if check.multilabel else 'classes'}; "
        f"{len(check.skipped)} files skipped.",
        "",
        "## Verdict",
        "",
        *[f"- {v.message}" for v in check.verdicts],
        "",
        *_counts(check),
        *_properties(check),
    ]
    if check.skipped:
        rows = [[s["path"], s["reason"]] for s in check.skipped]
        lines += [f"## Unusable files ({len(rows)})", ""] + _table(["file", "reason"], rows)
    lines += _duplicates(check)
    return "\n".join(lines).rstrip() + "\n"


def write_data_report(
    check: DataCheck,
    output: str | os.PathLike,
    montage: Sequence[tuple[str, np.ndarray]] = (),
    per_row: int = 6,
) -> dict[str, Path]:
    """Write ``data_report.md``, ``data_report.json`` and (given images) ``montage.png`` into ``output``.

    Args:
        check: what ``check_data`` found.
        output: the report folder (it must exist).
        montage: ``(class name, HxW[xC] uint8 image)`` pairs, a few per class, drawn in rows of ``per_row``.

    Returns:
        File name -> path written.
    """
    out = Path(output)
    written = {
        "data_report.md": atomic_write_text(out / "data_report.md", markdown(check)),
        "data_report.json": atomic_write_json(out / "data_report.json", check.to_dict()),
    }
    if montage:
        images = [image for _, image in montage]
        titles = [name for name, _ in montage]
        written["montage.png"] = plot_top_losses(images, titles, out / "montage.png", ncols=per_row)
    return written
