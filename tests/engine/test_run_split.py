"""One data description, one split: ``evaluate RUN``, ``export --quantize`` and a cross-validation fold list the
images the run listed in its ``split.csv``, byte for byte, for folder, groups-file and manifest runs.

The runs here are made as training makes them (``session.scan`` and ``session.describe``, the checkpoint with its
description, ``split.csv``) with untrained tiny weights: the split is what is tested, not the learning.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402

from sedensenet.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint  # noqa: E402
from sedensenet.config import TrainConfig  # noqa: E402
from sedensenet.data import DataError  # noqa: E402
from sedensenet.data.description import DataDescription, resolve, write_split_csv  # noqa: E402
from sedensenet.engine import session  # noqa: E402
from sedensenet.engine.samples import labelled_samples  # noqa: E402
from sedensenet.models import create_model  # noqa: E402
from sedensenet.quantize import choose_images  # noqa: E402


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The same 2 x 10 images as a folder, a folder with a groups file, and a manifest with a patient column."""
    root = make_folder(tmp_path_factory.mktemp("data") / "图像", per_class=10, size=16)
    files = sorted(p for p in root.rglob("*.png"))
    groups = root.parent / "groups.csv"
    with open(groups, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "group"])
        w.writerows([p.relative_to(root).as_posix(), f"p{i // 2}"] for i, p in enumerate(files))
    table = root / "labels.csv"
    with open(table, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "dx", "patient_id"])
        w.writerows([p.relative_to(root).with_suffix("").as_posix(), p.parent.name, f"p{i // 3}"]
                     for i, p in enumerate(files))  # fmt: skip
    return {
        "folder": {"data": str(root)},
        "groups": {"data": str(root), "groups": str(groups)},
        "manifest": {"data": str(table), "image_ext": ".png"},
        "manifest-folds": {"data": str(table), "image_ext": ".png", "folds": 3, "fold": 2},
    }


def _run(tmp_path: Path, settings: dict) -> tuple[Path, CheckpointMeta, object]:
    """A run folder as training leaves it: weights whose metadata holds the description, and split.csv."""
    config = TrainConfig(**settings, model="se_densenet_tiny", image_size=16, seed=5)
    splits = session.scan(config)
    model = create_model("se_densenet_tiny", num_classes=len(splits.classes))
    meta = CheckpointMeta(model=model.config.to_dict(), classes=splits.classes, image_size=16,
                          data=session.describe(config))  # fmt: skip
    run = tmp_path / "run"
    checkpoint = save_checkpoint(run / "weights" / "best.safetensors", model, meta)
    write_split_csv(splits, run / "split.csv")
    return checkpoint, read_checkpoint(checkpoint)[1], splits


@pytest.mark.parametrize("kind", ["folder", "groups", "manifest", "manifest-folds"])
def test_evaluate_quantize_and_folds_use_the_runs_split(kind: str, sources: dict, tmp_path: Path) -> None:
    checkpoint, meta, splits = _run(tmp_path, sources[kind])
    assert meta.data == session.describe(TrainConfig(**sources[kind], seed=5))  # stored typed, read back equal
    again = write_split_csv(resolve(meta.data), tmp_path / "again.csv")
    assert again.read_bytes() == (checkpoint.parents[1] / "split.csv").read_bytes()
    held_out = "test" if meta.data.folds else "val"
    samples, classes = labelled_samples(meta, None, held_out, split_record=checkpoint.parents[1] / "split.csv")
    expected = getattr(splits, held_out)
    assert classes == list(CLASSES) and [(s.path, s.label) for s in samples] == [(s.path, s.label) for s in expected]
    assert samples and len(splits.train) + len(splits.val) + len(splits.test) == 20
    quant = choose_images(checkpoint, meta)
    assert [s.path for s in quant.evaluation] == [s.path for s in splits.val]
    assert set(quant.calibration) <= {s.path for s in splits.train}
    if kind != "folder":  # groups (a file or a column) never straddle train and val or test
        by_split: dict[str, set[str]] = {}
        for row in csv.DictReader(open(checkpoint.parents[1] / "split.csv", encoding="utf-8")):
            assert row["group"]
            by_split.setdefault(row["split"], set()).add(row["group"])
        names = sorted(by_split)
        assert all(not (by_split[a] & by_split[b]) for a in names for b in names if a < b)


def test_evaluate_run_stops_when_images_have_gone(sources: dict, tmp_path: Path) -> None:
    checkpoint, meta, splits = _run(tmp_path, sources["folder"])
    record = checkpoint.parents[1] / "split.csv"
    rows = list(csv.DictReader(open(record, encoding="utf-8")))
    assert [r["path"] for r in rows][:1] == [splits.train[0].path.relative_to(splits.root).as_posix()]
    edited = [r for r in rows if r["path"] != rows[0]["path"]] + [{**rows[0], "path": "猫/gone.png"}]
    with open(record, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "split", "class", "group"])
        w.writeheader()
        w.writerows(edited)
    with pytest.raises(DataError, match=r"1 listed image\(s\) gone or unreadable \(e\.g\. 猫/gone\.png\); 1 new "
                                        r"image\(s\)"):  # fmt: skip
        labelled_samples(meta, None, "val", split_record=record)
    assert labelled_samples(meta, splits.root, "val")[0]  # --data given: no record to check against


def test_old_checkpoints_derive_their_description_from_extra(sources: dict) -> None:
    meta = CheckpointMeta(model={}, classes=list(CLASSES),
                          extra={"data": sources["groups"]["data"], "val_split": 0.25, "seed": 9,
                                 "groups": sources["groups"]["groups"], "folds": 4, "fold": 3})  # fmt: skip
    assert meta.description() == DataDescription(
        source="folder", path=sources["groups"]["data"], groups_file=sources["groups"]["groups"], val_split=0.25,
        split_seed=9, folds=4, fold=3,
    )  # fmt: skip
    assert CheckpointMeta(model={}, classes=["a", "b"]).description() is None
