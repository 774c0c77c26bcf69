"""CSV / TSV manifests: columns by name, paths, splits, groups, encodings, and errors that name the row."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sedensenet.data.images import DataError
from sedensenet.data.table import is_dataframe, is_table, read_table, write_dataframe


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_ham10000_style_ids_extension_and_lesion_groups(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path / "images", "ISIC_1.jpg", "ISIC_2.jpg", "ISIC_3.jpg")
    text = "lesion_id,image_id,dx,age\nHAM_7,ISIC_1,bkl,80\nHAM_7,ISIC_2,bkl,80\nHAM_9,ISIC_3,nv,55\n"
    csv = write(tmp_path / "HAM10000_metadata.csv", text)
    with caplog.at_level(logging.INFO, logger="sedensenet.data.table"):
        table = read_table(csv, image_root=tmp_path / "images", image_ext="jpg")
    assert (table.image_col, table.label_col, table.group_col, table.split_col) == ("image_id", "dx", "lesion_id", None)
    assert [(s.path, s.label, s.group, s.split, s.row) for s in table.samples] == [
        (tmp_path / "images" / "ISIC_1.jpg", "bkl", "HAM_7", None, 2),
        (tmp_path / "images" / "ISIC_2.jpg", "bkl", "HAM_7", None, 3),
        (tmp_path / "images" / "ISIC_3.jpg", "nv", "HAM_9", None, 4),
    ]
    assert table.classes == ["bkl", "nv"]
    assert "column 'lesion_id' groups the images" in caplog.text


def test_chestxray_image_index_and_given_label_column_relative_to_the_csv(tmp_path: Path) -> None:
    touch(tmp_path, "imgs/00000001_000.png", "imgs/00000002_000.png")
    csv = write(tmp_path / "Data_Entry.csv",
                "Image Index,Finding Labels,Patient ID\nimgs/00000001_000.png,Cardiomegaly,1\n"
                "imgs\\00000002_000.png,No Finding,2\n")  # fmt: skip
    table = read_table(csv, label_col="finding labels")
    assert table.label_col == "Finding Labels" and table.group_col == "Patient ID"
    assert [s.path for s in table.samples] == [tmp_path / "imgs/00000001_000.png", tmp_path / "imgs/00000002_000.png"]


def test_bom_chinese_names_quoted_fields_and_tsv(tmp_path: Path) -> None:
    touch(tmp_path, "猫/一, 二.png", "狗/三.png")
    csv = write(tmp_path / "标签.csv", '\ufeffpath,label\n"猫/一, 二.png",猫\n狗/三.png,"狗"\n')
    assert [(s.path.name, s.label) for s in read_table(csv).samples] == [("一, 二.png", "猫"), ("三.png", "狗")]
    tsv = write(tmp_path / "labels.tsv", "file\tclass\n猫/一, 二.png\t猫\n")
    assert [s.label for s in read_table(tsv).samples] == ["猫"]


def test_excel_semicolon_csv_is_detected(tmp_path: Path) -> None:
    touch(tmp_path, "a.png", "b.png")
    csv = write(tmp_path / "excel.csv", "filename;label;score\r\na.png;yes;0,5\r\nb.png;no;1,25\r\n")
    table = read_table(csv)
    assert [(s.path.name, s.label) for s in table.samples] == [("a.png", "yes"), ("b.png", "no")]
    assert table.columns == ["filename", "label", "score"]
    write(csv, "sep=;\r\nfilename;label\r\na.png;yes\r\n")  # Excel's hint line
    assert [(s.path.name, s.label, s.row) for s in read_table(csv).samples] == [("a.png", "yes", 3)]


def test_gbk_table_gets_a_clear_error_and_reads_with_the_encoding(tmp_path: Path) -> None:
    touch(tmp_path, "猫1.png")
    csv = write(tmp_path / "gbk.csv", "图像,label\n猫1.png,猫\n", encoding="gbk")
    with pytest.raises(
        DataError, match=r'is not utf-8 text .* it looks like GBK: pass encoding="gbk" \(--encoding gbk\)'
    ):
        read_table(csv)
    table = read_table(csv, encoding="gbk", image_col="图像")
    assert [(s.path.name, s.label) for s in table.samples] == [("猫1.png", "猫")]


def test_split_column_values_and_a_bad_value_named_by_row(tmp_path: Path) -> None:
    touch(tmp_path, *(f"{i}.png" for i in range(5)))
    rows = ["0.png,a,TRAIN", "1.png,a,Valid", "2.png,b,validation", "3.png,b,test", "4.png,b,val"]
    csv = write(tmp_path / "s.csv", "path,label,split\n" + "\n".join(rows) + "\n")
    assert [s.split for s in read_table(csv).samples] == ["train", "val", "val", "test", "val"]
    write(csv, "path,label,fold\n0.png,a,train\n1.png,a,holdout\n")
    with pytest.raises(DataError, match=r"s.csv, row 3: split 'holdout' \('fold'\) is not one of train, val"):
        read_table(csv, split_col="fold")


def test_missing_column_lists_the_columns_that_exist(tmp_path: Path) -> None:
    csv = write(tmp_path / "t.csv", "name,diagnosis\na.png,x\n")
    with pytest.raises(DataError, match=r"has no image column: name one path/file/.*its columns are: name, diagnosis"):
        read_table(csv)
    with pytest.raises(DataError, match=r"has no column 'dx' \(--label-col\); its columns are: name, diagnosis"):
        read_table(csv, image_col="name", label_col="dx")


def test_missing_files_are_counted_and_named_or_skipped(tmp_path: Path) -> None:
    touch(tmp_path, "ok.png")
    lines = ["ok.png,a"] + [f"gone{i}.png,b" for i in range(7)]
    csv = write(tmp_path / "t.csv", "path,label\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError) as exc:
        read_table(csv)
    assert "7 of the 8 images listed do not exist under" in str(exc.value)
    assert "row 3: gone0.png, row 4: gone1.png" in str(exc.value) and "and 2 more" in str(exc.value)
    table = read_table(csv, skip_missing=True)
    assert [s.path.name for s in table.samples] == ["ok.png"] and [s.row for s in table.missing] == list(range(3, 10))


def test_same_image_with_two_labels_empty_label_and_group_across_splits(tmp_path: Path) -> None:
    touch(tmp_path, "a.png", "b.png")
    csv = write(tmp_path / "t.csv", "path,label\na.png,x\nb.png,y\na.png,z\n")
    with pytest.raises(DataError, match=r"a.png is listed twice with two labels, 'x' \(row 2\) and 'z' \(row 4\)"):
        read_table(csv)
    write(csv, "path,label\na.png,x\nb.png,\n")
    with pytest.raises(DataError, match=r"row 3: .*b.png has an empty label \('label'\)"):
        read_table(csv)
    write(csv, "path,label,patient_id,split\na.png,x,p1,train\nb.png,y,p1,test\n")
    with pytest.raises(DataError, match=r"group 'p1' \('patient_id'\) is in train \(row 2\) and in test \(row 3\)"):
        read_table(csv)


def test_errors_come_before_any_file_is_opened(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not an image at all")  # never decoded: a table check reads no pixel
    csv = write(tmp_path / "t.csv", "path,label\na.png,x\na.png,x\n")
    assert [s.path.name for s in read_table(csv).samples] == ["a.png"]  # a repeated identical row is used once


def test_is_table_by_name() -> None:
    assert is_table("x/labels.CSV") and is_table("a.tsv") and not is_table("folder") and not is_table("a.png")


def test_a_dataframe_is_written_as_the_manifest_and_read_back(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install 'sedensenet[tables]')")
    touch(tmp_path / "imgs", "a.png", "b.png")
    frame = pd.DataFrame({"image": ["a.png", "b.png"], "label": ["猫", "狗"], "note": ["x, y", ""]})
    assert is_dataframe(frame) and not is_dataframe({"image": []})
    dest = write_dataframe(frame, tmp_path / "run" / "manifest.csv")
    table = read_table(dest, image_root=tmp_path / "imgs")
    assert [(s.path.name, s.label) for s in table.samples] == [("a.png", "猫"), ("b.png", "狗")]
    assert table.columns == ["image", "label", "note"]
