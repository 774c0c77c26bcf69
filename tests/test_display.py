"""display.Table as text: every column as wide as its widest cell, two spaces between columns, so a long cell
never runs into its neighbour (the bug ``sedensenet models`` had: ``...layertiny SE-DenseNet``)."""

from __future__ import annotations

from sedensenet.display import Table, display_width


def test_a_long_cell_widens_its_column_and_keeps_a_gap() -> None:
    placement = "head,block,transition,layer"
    table = Table(["name", "SE placement", "description"], [["tiny", placement, "tiny SE-DenseNet"], ["d", "-", "x"]])
    assert str(table).splitlines() == [
        "name  SE placement                 description",
        "----  ---------------------------  ----------------",
        "tiny  head,block,transition,layer  tiny SE-DenseNet",
        "d     -                            x",
    ]


def test_columns_line_up_by_display_width_with_wide_characters() -> None:
    table = Table(["类别", "n", "note"], [["猫猫猫猫猫猫", 12_345, "a"], ["dog", 7, "b"]])
    lines = str(table).splitlines()
    assert lines[2] == "猫猫猫猫猫猫  12,345  a"  # 12 columns wide, not 6
    assert lines[3] == "dog                7  b"
    assert {display_width(line[: -len("a")]) for line in lines[2:]} == {22}  # "note" starts at one column
