"""Files that must stay on one side of a train/validation split: a ``--groups`` CSV and duplicate clusters.

A groups file maps each image to a group, e.g. a patient id::

    file,group
    pneumonia/p001_a.jpeg,p001
    normal/p001_b.jpeg,p001

Paths are relative to the data folder (absolute paths inside it work too). Every image must be listed, and every
listed file must exist: a groups file that misses files or names unknown ones is refused before any image is read.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from sedensenet.errors import UserError

logger = logging.getLogger(__name__)

_FILE_COLUMNS = ("file", "path", "filename", "image")
_GROUP_COLUMNS = ("group", "patient", "patient_id", "subject", "id")


class GroupsError(UserError, ValueError):
    """A groups CSV that cannot be used; the message names the file and what is wrong."""


def _columns(header: list[str], path: Path) -> tuple[int, int]:
    names = [h.strip().lower() for h in header]
    file_col = next((names.index(c) for c in _FILE_COLUMNS if c in names), None)
    group_col = next((names.index(c) for c in _GROUP_COLUMNS if c in names), None)
    if file_col is None or group_col is None:
        raise GroupsError(
            f"{path}: the first row must name a file column ({'/'.join(_FILE_COLUMNS)}) and a group column "
            f"({'/'.join(_GROUP_COLUMNS)}), e.g. 'file,group'; got {header}"
        )
    return file_col, group_col


def _listing(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def read_groups(path: str | os.PathLike, root: str | os.PathLike, files: Iterable[Path]) -> dict[Path, str]:
    """Map every one of ``files`` (under ``root``) to its group from the CSV at ``path``.

    Raises:
        GroupsError: the CSV cannot be read, lacks the columns, lists a file twice with two groups, names files
            that are not images of the data folder, or leaves images out; the message names them.
    """
    path, root = Path(path), Path(root)
    files = list(files)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise GroupsError(f"cannot read groups file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise GroupsError(f"groups file {path} is not UTF-8 text: save it as UTF-8 CSV") from None
    if not rows:
        raise GroupsError(f"groups file {path} is empty: give a 'file,group' header and one row per image")
    file_col, group_col = _columns(rows[0], path)
    by_rel = {f.relative_to(root).as_posix(): f for f in files}
    groups: dict[Path, str] = {}
    unknown: list[str] = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(file_col, group_col):
            raise GroupsError(f"{path}, line {number}: expected a file and a group, got {row}")
        name, group = row[file_col].strip(), row[group_col].strip()
        given = Path(name)
        inside = given.is_absolute() and given.is_relative_to(root)
        rel = given.relative_to(root).as_posix() if inside else name.replace("\\", "/")
        target = by_rel.get(rel)
        if target is None:
            unknown.append(name)
        elif groups.setdefault(target, group) != group:
            raise GroupsError(f"{path}: {name} is listed with two groups, {groups[target]!r} and {group!r}")
    missing = sorted(rel for rel, f in by_rel.items() if f not in groups)
    if unknown:
        raise GroupsError(
            f"{path} names {len(unknown)} file(s) that are not images under {root}: {_listing(unknown)}; "
            "paths are relative to the data folder, e.g. cats/1.jpg"
        )
    if missing:
        raise GroupsError(
            f"{path} misses {len(missing)} of the {len(by_rel)} images under {root}: {_listing(missing)}; "
            "give every image a group (its own name, if it has no other)"
        )
    logger.info("groups from %s: %d images in %d groups", path, len(groups), len(set(groups.values())))
    return groups


def split_units(
    per_class: dict[int, list[tuple[Path, bytes]]],
    n_val: dict[int, int],
    unit_of: dict[Path, str],
) -> tuple[set[Path], dict[int, int]]:
    """Choose the validation files, keeping every unit (a group or a duplicate cluster) on one side.

    Args:
        per_class: each class's files with their split key (the seeded hash that orders them).
        n_val: how many files of each class validation should get.
        unit_of: the unit of each file that belongs to one; other files are units of their own.

    Returns:
        The validation files, and the validation count of each class whose count differs from ``n_val``.

    Units are taken in the order of their smallest key; a unit goes to validation while it fits in the class's
    count, and a unit met again in a later class stays on the side it got first. Without units this is exactly
    "the first ``n_val`` files by key".
    """
    side: dict[str, bool] = {}  # unit -> in validation
    val: set[Path] = set()
    differs: dict[int, int] = {}
    for label in sorted(per_class):
        units: dict[str, list[tuple[bytes, Path]]] = {}
        for path, key in per_class[label]:
            units.setdefault(unit_of.get(path, f"\0{path}"), []).append((key, path))
        ordered = sorted(units.items(), key=lambda item: min(item[1]))
        count = 0
        for unit, members in ordered:
            if unit not in side:
                side[unit] = count + len(members) <= n_val[label]
            if side[unit]:
                val.update(p for _, p in members)
                count += len(members)
        if count != n_val[label]:
            differs[label] = count
    return val, differs
