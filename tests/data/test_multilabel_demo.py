"""The multi-label demo set (``builtin:digit-pairs``) and the generated multi-label tables of tests/imagegen.py."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from sedensenet.data import BUILTIN, DataError, resolve_data, write_builtin
from sedensenet.data.builtin import MARKER, builtin_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import FINDINGS, PREVALENCE, draw_multilabel, make_multilabel_table, multilabel_scores  # noqa: E402


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo set's manifest, written once for this module."""
    return builtin_table("builtin:digit-pairs", cache_dir=tmp_path_factory.mktemp("cache"))


def test_digit_pairs_table_lists_the_digits_each_mosaic_shows(pairs: Path) -> None:
    from sklearn.datasets import load_digits

    root = pairs.parent
    assert pairs == root.parent.parent / "datasets" / "digit-pairs" / "labels.csv"
    assert resolve_data("builtin:digit-pairs", cache_dir=root.parent.parent) == root
    with pairs.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["image", "labels"] and len(rows) == 1800
    assert json.loads((root / MARKER).read_text()) == {"name": "digit-pairs", "files": 1800}

    digits = load_digits()
    tiles = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8).repeat(2, axis=1).repeat(2, axis=2)
    shows: dict[bytes, set[int]] = {}
    for tile, digit in zip(tiles, digits.target, strict=True):
        shows.setdefault(tile.tobytes(), set()).add(int(digit))
    counts = np.zeros(10, dtype=int)
    for row in rows:
        labels = [int(d) for d in row["labels"].split("|")]
        assert 1 <= len(labels) <= 3 and labels == sorted(set(labels)), row
        counts[labels] += 1
        with Image.open(root / row["image"]) as im:
            assert im.mode == "L" and im.size == (32, 32)
            arr = np.asarray(im)
        drawn = [arr[r : r + 16, c : c + 16] for r in (0, 16) for c in (0, 16)]
        drawn = [t for t in drawn if t.any()]  # blank tiles are black
        assert len(drawn) == len(labels), row
        seen = [shows[t.tobytes()] & set(labels) for t in drawn]  # every tile is one of the labelled digits ...
        assert all(seen) and set().union(*seen) == set(labels), row  # ... and every label is drawn
    prevalence = counts / len(rows)
    assert prevalence.min() > 0.08 and prevalence.max() < 0.36 and prevalence.max() > 2.5 * prevalence.min()


def test_digit_pairs_written_byte_for_byte_again(pairs: Path, tmp_path: Path) -> None:
    again = write_builtin("digit-pairs", tmp_path / "again")
    assert _files(again) == _files(pairs.parent)


def test_interrupted_digit_pairs_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save, calls = Image.Image.save, []

    def failing_save(self: Image.Image, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) > 20:
            raise OSError("disk full")
        save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        builtin_table("builtin:digit-pairs", cache_dir=tmp_path)
    assert list((tmp_path / "datasets").iterdir()) == []  # neither the set nor its temporary folder


def test_builtin_table_names_only_table_sets(tmp_path: Path) -> None:
    from sedensenet.config import TrainConfig

    assert builtin_table("builtin:digits", cache_dir=tmp_path) is None
    assert builtin_table("labels.csv", cache_dir=tmp_path) is None
    assert builtin_table(Path("builtin:digit-pairs"), cache_dir=tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(DataError, match="builtin:digit-pairs"):
        builtin_table("builtin:pairs", cache_dir=tmp_path)
    config = TrainConfig.from_dict(BUILTIN["digit-pairs"])
    assert (config.image_size, config.in_chans) == (16, 1)  # the digits' own resolution, grayscale


def test_generated_best_auroc_is_the_bayes_scorers(tmp_path: Path) -> None:
    _, labels, best = make_multilabel_table(tmp_path, n=8, seed=0)
    assert labels == FINDINGS and best == {"Effusion": 1.0, "Mass": 1.0, "Nodule": 0.9, "气胸": 0.8}
    images, present = draw_multilabel(20_000, seed=3, size=16)  # the size other tests train at
    assert images.shape == (20_000, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_allclose(present.mean(axis=0), PREVALENCE, atol=0.01)
    scores = multilabel_scores(images)
    assert not (scores.astype(bool) & ~present).any()  # a disc is never drawn for an absent label
    for k, name in enumerate(labels):  # the sampling error of the hidden share: at most 0.004 here
        assert abs(roc_auc_score(present[:, k], scores[:, k]) - best[name]) < 0.01, name


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def test_generated_tables_delimited_and_columns(tmp_path: Path) -> None:
    table, labels, _ = make_multilabel_table(tmp_path / "nih", n=400, seed=1)
    header, rows = _read(table)
    assert header == ["image", "labels"] and len(rows) == 400
    truth = np.array([[name in cell.split("|") for name in labels] for _, cell in rows])
    assert all(cell == "No Finding" for (_, cell), t in zip(rows, truth, strict=True) if not t.any())
    with Image.open(table.parent / rows[0][0]) as im:
        assert im.mode == "RGB" and im.size == (32, 32)
    scores = multilabel_scores(np.stack([np.asarray(Image.open(table.parent / image)) for image, _ in rows]))
    assert not (scores.astype(bool) & ~truth).any()
    np.testing.assert_array_equal(scores[:, :2], truth[:, :2])  # Effusion and Mass are never hidden
    assert 0 < (truth[:, 3] & (scores[:, 3] == 0)).sum() < truth[:, 3].sum()  # 气胸: some hidden, not all

    chex = tmp_path / "chexpert"
    table2, _, _ = make_multilabel_table(chex, n=400, seed=1, columns=True, patients=True, uncertain=0.1, blank=0.05)
    header, rows = _read(table2)
    assert header == ["image", *labels, "patient"]
    cells = np.array([row[1:5] for row in rows])
    assert set(cells.ravel()) == {"0", "1", "-1", ""}
    assert abs((cells == "-1").mean() - 0.1) < 0.03 and abs((cells == "").mean() - 0.05) < 0.02
    known = np.isin(cells, ["0", "1"])
    np.testing.assert_array_equal(cells[known] == "1", truth[known])  # the same truth, some of it masked
    assert _files(chex / "images") == _files(tmp_path / "nih" / "images")  # options never change the images
    patients = [row[5] for row in rows]
    sizes = np.unique(patients, return_counts=True)[1]
    assert patients == sorted(patients) and sizes.max() == 4 and (sizes > 1).sum() > 50
    with pytest.raises(ValueError, match="columns=True"):
        make_multilabel_table(tmp_path / "bad", n=4, uncertain=0.1)
