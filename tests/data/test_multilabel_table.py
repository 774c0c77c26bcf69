"""Multi-label manifests: a column of several labels or one 0/1 column per label, policies for uncertain and
blank entries, the task rule, errors naming the row, and the description's new fields."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from sedensenet.data.description import DataDescription, TableColumns, read_split_csv, resolve, write_split_csv
from sedensenet.data.images import DataError, ImageFolderDataset, Sample
from sedensenet.data.table import LabelOptions, read_table

NAN = math.nan


def table(root: Path, text: str, *, name: str = "labels.csv", files: int | None = None) -> Path:
    """The table, and an empty file for every image it names (first column); nothing is decoded."""
    lines = text.strip().splitlines()
    for line in lines[1:]:
        cell = line.split("\t" if name.endswith(".tsv") else ("," if "," in lines[0] else ";"))[0]
        (root / cell).parent.mkdir(parents=True, exist_ok=True)
        (root / cell).write_bytes(b"")
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def labels_of(t) -> list:
    return [(s.path.name, s.label) for s in t.samples]


def same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def test_pipes_in_finding_labels_with_no_finding_as_all_zeros(tmp_path: Path) -> None:
    csv = table(
        tmp_path,
        """Image Index,Finding Labels,Patient ID
a.png,Effusion|Mass,1
b.png,No Finding,1
c.png,Mass,2
d.png,Atelectasis|Effusion,3""",
    )
    t = read_table(csv, labels=LabelOptions(none_label="No Finding"))
    assert (t.task, t.label_col, t.label_names, t.classes) == (
        "multi",
        "Finding Labels",
        ["Atelectasis", "Effusion", "Mass"],
        t.label_names,
    )
    assert labels_of(t) == [("a.png", (0.0, 1.0, 1.0)), ("b.png", (0.0, 0.0, 0.0)), ("c.png", (0.0, 0.0, 1.0)),
                            ("d.png", (1.0, 1.0, 0.0))]  # fmt: skip
    assert [s.group for s in t.samples] == ["1", "1", "2", "3"]


def test_without_none_label_single_labels_stay_a_single_label_table(tmp_path: Path) -> None:
    csv = table(tmp_path, "path,labels\na.png,No Finding\nb.png,Mass\n")
    t = read_table(csv)
    assert (t.task, t.classes, labels_of(t)) == ("single", ["Mass", "No Finding"], [("a.png", "No Finding"),
                                                                                     ("b.png", "Mass")])  # fmt: skip
    forced = read_table(csv, labels=LabelOptions(task="multi"))
    assert (forced.task, forced.label_names, labels_of(forced)) == (
        "multi", ["Mass", "No Finding"], [("a.png", (0.0, 1.0)), ("b.png", (1.0, 0.0))])  # fmt: skip


def test_semicolon_and_comma_cells_when_unambiguous_and_an_error_when_not(tmp_path: Path) -> None:
    csv = table(tmp_path, 'path,label\na.png,"cat;dog"\nb.png,dog\nc.png,"cat|bird"\n')
    assert labels_of(read_table(csv)) == [("a.png", (0.0, 1.0, 1.0)), ("b.png", (0.0, 0.0, 1.0)),
                                          ("c.png", (1.0, 1.0, 0.0))]  # fmt: skip
    excel = table(tmp_path, "path;label\na.png;cat,dog\nb.png;dog\n", name="excel.csv")
    assert labels_of(read_table(excel)) == [("a.png", (1.0, 1.0)), ("b.png", (0.0, 1.0))]
    both = table(tmp_path, 'path,label\na.png,"cat;dog,bird"\nb.png,dog\n', name="both.csv")
    with pytest.raises(
        DataError, match=r"both\.csv, row 2 \('label'\): the labels 'cat;dog,bird' hold both ';' and ','"
    ):
        read_table(both)
    assert labels_of(read_table(both, labels=LabelOptions(label_delim=";"))) == [
        ("a.png", (1.0, 0.0, 1.0)), ("b.png", (0.0, 1.0, 0.0))]  # fmt: skip
    assert read_table(both, labels=LabelOptions(label_delim=";")).label_names == ["cat", "dog", "dog,bird"]
    quoted = table(tmp_path, 'path,label\na.png,"Mass, left"\nb.png,Mass|Edema\n', name="quoted.csv")
    assert read_table(quoted).label_names == ["Edema", "Mass", "Mass, left"]  # the table's own "," never splits


def test_binary_columns_found_from_values_and_listed_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = table(
        tmp_path,
        """Path,Sex,Age,Pleural Effusion,Edema,Cardiomegaly,patient
x/a.png,F,61,1.0,,-1.0,P1
x/b.png,M,40,0.0,1,0,P2
x/c.png,F,33,-1,0.0,1,P2""",
    )
    with caplog.at_level(logging.INFO, logger="sedensenet.data.table"):
        t = read_table(csv)
    assert "the 0/1 columns Pleural Effusion, Edema, Cardiomegaly are the labels" in caplog.text
    assert (t.task, t.label_names, t.label_cols) == ("multi", ["Cardiomegaly", "Edema", "Pleural Effusion"],
                                                      ["Pleural Effusion", "Edema", "Cardiomegaly"])  # fmt: skip
    want = [(NAN, NAN, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, NAN)]
    assert all(same(s.label, w) for s, w in zip(t.samples, want, strict=True))
    zeros = read_table(csv, labels=LabelOptions(uncertain="zeros", missing="zeros"))
    assert [s.label for s in zeros.samples] == [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)]
    chexpert = read_table(csv, labels=LabelOptions(none_label="Edema"))  # a "No Finding" column is not a label
    assert chexpert.label_names == ["Cardiomegaly", "Pleural Effusion"]
    ones = read_table(csv, labels=LabelOptions(uncertain="ones"))
    assert all(same(s.label, w) for s, w in zip(ones.samples, [(1.0, NAN, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 1.0)],
                                                strict=True))  # fmt: skip


def test_label_col_names_the_binary_columns_and_bad_values_name_row_and_column(tmp_path: Path) -> None:
    csv = table(tmp_path, "image,a,b,c,score\np.png,1,0,1,3\nq.png,0,,0,1\n")
    t = read_table(csv, label_col="b, a")
    assert (t.label_col, t.label_cols, t.label_names) == ("b,a", ["b", "a"], ["a", "b"])
    assert all(same(s.label, w) for s, w in zip(t.samples, [(1.0, 0.0), (0.0, NAN)], strict=True))
    with pytest.raises(DataError, match=r"row 2: .*p\.png has '3' in label column 'score'; use 1 \(present\)"):
        read_table(csv, label_col="a,score")
    with pytest.raises(DataError, match=r"has no column 'zz' \(--label-col\); its columns are: image, a, b, c, score"):
        read_table(csv, label_col="a,zz")
    with pytest.raises(DataError, match=r"0/1 columns \(b, a\), a multi-label table: use task auto or multi"):
        read_table(csv, label_col="b,a", labels=LabelOptions(task="single"))


def test_blank_cells_follow_missing_in_a_multi_label_column_but_stay_an_error_in_a_single_label_one(
    tmp_path: Path,
) -> None:
    csv = table(tmp_path, "path,label\na.png,x|y\nb.png,\nc.png,y\n")
    t = read_table(csv)
    assert same(t.samples[1].label, (NAN, NAN)) and t.samples[0].label == (1.0, 1.0)
    assert read_table(csv, labels=LabelOptions(missing="zeros")).samples[1].label == (0.0, 0.0)
    single = table(tmp_path, "path,label\na.png,x\nb.png,\n", name="single.csv")
    with pytest.raises(DataError, match=r"single\.csv, row 3: b\.png has an empty label \('label'\)"):
        read_table(single)


def test_errors_name_the_row(tmp_path: Path) -> None:
    twice = table(tmp_path, "path,label\na.png,x|y\nb.png,y\na.png,y|x\na.png,x\n", name="twice.csv")
    with pytest.raises(DataError, match=r"a\.png is listed twice with two labels, 'x\|y' \(row 2\) and 'x' \(row 5\)"):
        read_table(twice)
    none = table(tmp_path, "path,label\na.png,x|None\nb.png,y\n", name="none.csv")
    with pytest.raises(DataError, match=r"none\.csv, row 2: a\.png is labelled 'None' \(none_label\) and x at once"):
        read_table(none, labels=LabelOptions(none_label="None"))
    nothing = table(tmp_path, "path,notes\na.png,hello\n", name="nothing.csv")
    with pytest.raises(DataError, match=r"has no label column: .*a,b,c names one 0/1 column per label"):
        read_table(nothing)
    for bad, match in ((dict(task="many"), "task must be one of auto, single, multi"),
                       (dict(uncertain="maybe"), "uncertain must be one of ignore, zeros, ones"),
                       (dict(missing="ones"), "missing must be one of ignore, zeros"),
                       (dict(label_delim="||"), "label_delim must be one character")):  # fmt: skip
        with pytest.raises(DataError, match=match):
            LabelOptions(**bad)


def test_non_ascii_labels_and_paths(tmp_path: Path) -> None:
    csv = table(tmp_path, "路径,label\n胸片/一.png,积液|肿块\n胸片/二.png,积液\n", name="标签.csv")
    t = read_table(csv, image_col="路径")
    assert labels_of(t) == [("一.png", (1.0, 1.0)), ("二.png", (1.0, 0.0))] and t.label_names == ["积液", "肿块"]
    splits = resolve(DataDescription.for_data(csv, columns=TableColumns(image="路径"), val_split=0.0),
                     check_images=False)  # fmt: skip
    dest = write_split_csv(splits, tmp_path / "split.csv")
    assert [(r["path"], r["class"]) for r in read_split_csv(dest)] == [
        ("胸片/一.png", "积液|肿块"),
        ("胸片/二.png", "积液"),
    ]


def test_description_fields_validate_and_round_trip(tmp_path: Path) -> None:
    d = DataDescription.for_data(tmp_path / "t.csv", task="multi", label_delim=";", none_label="No Finding",
                                 uncertain="ones", missing="zeros")  # fmt: skip
    again = DataDescription.from_json(d.to_json())
    assert again == d and (again.task, again.label_delim, again.none_label, again.uncertain, again.missing) == (
        "multi", ";", "No Finding", "ones", "zeros")  # fmt: skip
    old = json.loads(DataDescription.for_data(tmp_path / "t.csv").to_json())
    for key in ("task", "label_delim", "none_label", "uncertain", "missing"):
        del old[key]
    assert DataDescription.from_dict(old) == DataDescription.for_data(tmp_path / "t.csv")
    assert json.loads(d.to_json())["version"] == 1
    with pytest.raises(DataError, match="uncertain must be one of ignore, zeros, ones, got 'drop'"):
        DataDescription.for_data(tmp_path / "t.csv", uncertain="drop")
    with pytest.raises(DataError, match="a folder of class sub-folders is single-label: task 'multi' needs a CSV"):
        DataDescription.for_data(tmp_path, task="multi")


def test_resolve_gives_tuple_labels_test_from_the_split_column_and_float_targets(tmp_path: Path) -> None:
    rows = ["path,label,split"] + [f"i{k}.png,{'a|b' if k % 3 == 0 else 'b' if k % 3 == 1 else 'c'},"
                                   f"{'test' if k >= 9 else 'train'}" for k in range(12)]  # fmt: skip
    csv = table(tmp_path, "\n".join(rows))
    splits = resolve(DataDescription.for_data(csv, val_split=0.25), check_images=False)
    assert (splits.task, splits.classes) == ("multi", ["a", "b", "c"])
    assert sorted(s.path.name for s in splits.test) == ["i10.png", "i11.png", "i9.png"]
    assert len(splits.train) + len(splits.val) == 9 and len(splits.val) in (2, 3)
    assert splits.counts()["test"] == {"a": 1, "b": 2, "c": 1}
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    _, y = ImageFolderDataset([Sample(tmp_path / "x.png", (1.0, NAN, 0.0))])[0]
    assert y.dtype == torch.float32 and y[0] == 1 and torch.isnan(y[1]) and y[2] == 0


def test_a_no_finding_label_is_trained_only_with_a_warning_that_names_the_flag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    table = tmp_path / "labels.csv"
    table.write_text("image,labels\na.png,Effusion|Mass\nb.png,No Finding\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="sedensenet"):
        read = read_table(table)
    assert "No Finding" in read.label_names
    assert "--none-label 'No Finding'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sedensenet"):
        read = read_table(table, labels=LabelOptions(none_label="No Finding"))
    assert read.label_names == ["Effusion", "Mass"] and "--none-label" not in caplog.text
