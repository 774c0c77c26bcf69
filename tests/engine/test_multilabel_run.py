"""A multi-label run as a user makes it: a CheXpert-style table (one 0/1 column per finding, uncertain -1 and blank
entries, patients, a test split) trained in one call, checked against the generator's known best AUROC on the same
images, resumed exactly, predicted with TTA and cross-validated with patient groups."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import FINDINGS, make_multilabel_table, multilabel_scores  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet import checkpoint as ckpt  # noqa: E402
from sedensenet.config import ConfigError  # noqa: E402

SETTINGS = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 32, "lr": 3e-3, "workers": 0,
            "verbose": 0, "amp": "off"}  # fmt: skip


def _with_split(table: Path, test_from: int) -> Path:
    """The table with a split column: rows from ``test_from`` on are test, whole patients only."""
    rows = list(csv.DictReader(open(table, encoding="utf-8", newline="")))
    first_test_patient = rows[test_from]["patient"]
    start = next(i for i, r in enumerate(rows) if r["patient"] == first_test_patient)
    with open(table, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "split"])
        w.writeheader()
        w.writerows({**r, "split": "test" if i >= start else "train"} for i, r in enumerate(rows))
    return table


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = make_multilabel_table(tmp_path_factory.mktemp("cxr") / "表", n=900, size=16, seed=1, columns=True,
                                 patients=True, uncertain=0.08, blank=0.04)  # fmt: skip
    return _with_split(made.csv, 600)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 images of the same kind, for the runs that check the mechanics rather than the scores."""
    made = make_multilabel_table(tmp_path_factory.mktemp("small"), n=120, size=16, seed=2, columns=True,
                                 patients=True, uncertain=0.08, blank=0.04)  # fmt: skip
    return _with_split(made.csv, 100)


@pytest.fixture(scope="module")
def run(table: Path, tmp_path_factory: pytest.TempPathFactory) -> sedensenet.api.TrainResult:
    # batch 16 for 6 epochs: every label within 0.02 of the best possible on seeds 1-3 (batch 32 left Mass 0.05 off)
    settings = {**SETTINGS, "batch_size": 16}
    return sedensenet.train(str(table), epochs=6, project=str(tmp_path_factory.mktemp("runs")), **settings)


@pytest.mark.slow
def test_each_label_comes_within_0_05_of_the_best_possible_auroc_on_the_same_images(run, table: Path) -> None:
    metrics = json.loads((run.run_dir / "test" / "metrics.json").read_text(encoding="utf-8"))
    assert run.monitor == "val_auc" and set(metrics["per_label"]) == set(FINDINGS)
    with open(run.run_dir / "test" / "predictions.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    best = multilabel_scores(np.stack([np.asarray(Image.open(r["path"]).convert("RGB")) for r in rows]))
    for k, name in enumerate(FINDINGS):
        known = [name not in r["ignored"].split("|") for r in rows]
        truth = np.array([name in r["label"].split("|") for r in rows])[known]
        figures = metrics["per_label"][name]
        assert figures["n"] == sum(known) and figures["ignored"] == len(rows) - sum(known)
        assert figures["auroc"] >= roc_auc_score(truth, best[known, k]) - 0.05, name
        low, high = figures["auroc_ci"]
        assert low <= figures["auroc"] <= high
    log = (run.run_dir / "train.log").read_text(encoding="utf-8")
    assert "AUROC (95% CI)" in log and "macro AUROC" in log  # the CheXNet-style table, printed


def test_the_checkpoint_decides_each_label_at_its_own_threshold(run) -> None:
    _, meta = ckpt.read_checkpoint(run.best_checkpoint)
    assert meta.task == "multi" and [d.name for d in meta.labels] == meta.classes == sorted(FINDINGS)
    metrics = json.loads((run.run_dir / "test" / "metrics.json").read_text(encoding="utf-8"))
    assert [metrics["per_label"][d.name]["threshold"] for d in meta.labels] == [d.threshold for d in meta.labels]
    history = list(csv.DictReader(open(run.run_dir / "history.csv", encoding="utf-8")))
    best = max(history, key=lambda r: float(r["val_auc"]))
    assert int(best["epoch"]) == run.best_epoch and not math.isnan(float(best["val_mAP"]))


def test_predict_with_tta_writes_a_column_per_label_and_the_decided_set(run, table: Path, tmp_path: Path) -> None:
    images = sorted((table.parent / "images").glob("*.png"))[600:610]
    out = tmp_path / "p.csv"
    flip = sedensenet.InferenceSettings(tta="flip")
    preds = sedensenet.predict(run.run_dir, [str(p) for p in images], settings=flip, output=str(out))
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "labels", *sorted(FINDINGS), "error"]
    _, meta = ckpt.read_checkpoint(run.best_checkpoint)
    plain = sedensenet.predict(run.run_dir, [str(p) for p in images])
    assert any(p.scores != q.scores for p, q in zip(preds, plain, strict=True))  # the flipped view counted
    for p, row in zip(preds, rows, strict=True):
        assert row["labels"] == "|".join(p.labels)
        assert set(p.labels) == {d.name for d in meta.labels if p.scores[d.name] >= d.threshold}


def test_a_resumed_run_ends_with_the_same_weights(small: Path, tmp_path: Path) -> None:
    steps = {"max_steps": 3, "accumulate": 2}  # gradient accumulation and masked labels resume alike
    whole = sedensenet.train(str(small), epochs=2, **steps, project=str(tmp_path), name="whole", **SETTINGS)
    half = sedensenet.train(str(small), epochs=1, **steps, project=str(tmp_path), name="half", **SETTINGS)
    resumed = sedensenet.train(resume=str(half.run_dir), epochs=2)
    a, _ = ckpt.read_checkpoint(whole.run_dir / "weights" / "last.safetensors")
    b, _ = ckpt.read_checkpoint(resumed.run_dir / "weights" / "last.safetensors")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_cv_keeps_patients_whole_and_reports_macro_auroc_and_map(small: Path, tmp_path: Path) -> None:
    from sedensenet.cv import cross_validate

    settings = {k: v for k, v in SETTINGS.items() if k != "verbose"}
    result = cross_validate(str(small), folds=2, epochs=1, max_steps=2, project=str(tmp_path), **settings)
    assert {"macro_auroc", "macro_map", "subset_accuracy"} <= set(result.summary)
    assert {"macro_auroc", "macro_map"} <= set(result.pooled) and len(result.pooled_intervals["macro_auroc"]) == 2
    held_out = {}
    for k, run_dir in enumerate(result.runs, start=1):
        rows = list(csv.DictReader(open(run_dir / "split.csv", encoding="utf-8")))
        patients = {}
        for r in rows:
            assert patients.setdefault(r["group"], r["split"]) == r["split"], "a patient on two sides of a fold"
        held_out.update({r["path"]: k for r in rows if r["split"] == "test"})
    assert "stratified by label" in (result.out_dir / "cv.md").read_text(encoding="utf-8")
    test_rows = sum(r["split"] == "test" for r in csv.DictReader(open(small, encoding="utf-8")))
    assert len(held_out) == 120 - test_rows  # every image outside the table's own test split is held out once


def test_positive_is_refused_in_a_multi_label_run(small: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--positive Mass: a multi-label run decides each label on its own"):
        sedensenet.train(str(small), epochs=1, positive="Mass", project=str(tmp_path), **SETTINGS)


def test_explain_maps_the_given_label_and_names_the_decided_set(run, table: Path, tmp_path: Path) -> None:
    from sedensenet.explain import explain_images

    image = sorted((table.parent / "images").glob("*.png"))[600]
    [pred] = sedensenet.predict(run.run_dir, [str(image)])
    other = next(n for n in sorted(FINDINGS) if n not in pred.labels) if len(pred.labels) < 4 else sorted(FINDINGS)[0]
    [item] = explain_images(run.run_dir, [image], tmp_path, target=other, device="cpu").images
    assert item.target == other and item.reason == "given" and item.labels == pred.labels
    assert item.output.is_file() and item.output.name.endswith(f"_{other}_gradcam.png")


def test_sharded_prediction_writes_the_same_label_columns(run, table: Path, tmp_path: Path) -> None:
    images = [str(p) for p in sorted((table.parent / "images").glob("*.png"))[600:606]]
    sedensenet.predict(run.run_dir, images, output=str(tmp_path / "one.csv"))
    sedensenet.api.predict_sharded(run.run_dir, images, tmp_path / "sharded.csv")
    one = (tmp_path / "one.csv").read_text(encoding="utf-8").splitlines()
    assert (tmp_path / "sharded.csv").read_text(encoding="utf-8").splitlines() == one
    assert one[0] == ",".join(["path", "labels", *sorted(FINDINGS), "error"])


def test_compare_on_a_table_reports_macro_auroc_and_map(small: Path, tmp_path: Path) -> None:
    from sedensenet.compare import compare

    settings = {k: v for k, v in SETTINGS.items() if k != "verbose"}
    result = compare(str(small), ["se_densenet_tiny"], seeds=2, epochs=1, max_steps=2, project=str(tmp_path),
                     **settings)  # fmt: skip
    [row] = result.rows
    assert len(row.roc_auc) == len(row.mean_ap) == 2 and all(0 <= v <= 1 for v in row.roc_auc + row.mean_ap)
    table = (result.out_dir / "compare.md").read_text(encoding="utf-8")
    assert "| macro AUROC | 95% interval | mAP | 95% interval |" in table
    assert (result.out_dir / "compare.csv").read_text(encoding="utf-8").splitlines()[0].endswith("map,test_map,run")


def test_the_trained_run_exports_and_quantizes_with_per_label_agreement(run, table: Path, tmp_path: Path) -> None:
    from sedensenet.export import export_model

    images = [str(p) for p in sorted((table.parent / "images").glob("*.png"))[600:620]]
    onnx = export_model(run.run_dir, output=tmp_path / "model.onnx").path
    eager, exported = sedensenet.predict(run.run_dir, images), sedensenet.predict(onnx, images)
    assert [p.labels for p in exported] == [p.labels for p in eager]
    for p, q in zip(eager, exported, strict=True):
        assert max(abs(p.scores[k] - q.scores[k]) for k in p.scores) < 1e-4
    # int8: calibrated on the run's own training rows, judged per label on its val rows (uncertain entries ignored)
    q = export_model(run.run_dir, quantize="int8", output=tmp_path / "model.int8.onnx", force=True).quantization
    assert q["task"] == "multi" and sorted(q["per_label"]) == sorted(FINDINGS)
    assert q["agreement"] == min(row["agreement"] for row in q["per_label"].values())
    assert all(row["known"] <= q["eval_images"] for row in q["per_label"].values())


def test_evaluate_on_the_runs_own_test_rows_gives_the_runs_figures(run, tmp_path: Path) -> None:
    saved = json.loads((run.run_dir / "test" / "metrics.json").read_text(encoding="utf-8"))
    report = sedensenet.evaluate(run.run_dir, split="test", output=tmp_path / "eval", seed=123)
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert report.num_samples == saved["num_samples"] == again["num_samples"]
    for key in ("macro_auroc", "macro_map", "subset_accuracy", "hamming_loss"):
        assert again[key] == pytest.approx(saved[key], abs=1e-6), key
    assert {n: again["per_label"][n]["ignored"] for n in FINDINGS} == {n: saved["per_label"][n]["ignored"]
                                                                       for n in FINDINGS}  # fmt: skip
    assert (tmp_path / "eval" / "per_label.csv").is_file() and (tmp_path / "eval" / "label_curves.png").is_file()
