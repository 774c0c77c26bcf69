"""The figures a run stores in its checkpoint are those of its reports: test first, labelled, with intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sedensenet.checkpoint import CheckpointMeta, Estimate, read_checkpoint, save_checkpoint
from sedensenet.engine.evaluation import evaluation_summary, record_evaluation
from sedensenet.models import create_model
from sedensenet.reports import compute_metrics


def report_dict(seed: int, classes: list[str], label: str, **decision: object) -> dict:
    rng = np.random.default_rng(seed)
    y = np.arange(30) % len(classes)
    probs = rng.dirichlet(np.ones(len(classes)), size=30)
    probs[np.arange(30), y] += 0.6 * (np.arange(30) % 3 != 0)  # two in three right
    probs /= probs.sum(1, keepdims=True)
    return {**compute_metrics(y.tolist(), probs, classes, **decision).to_dict(), "label": label}


def test_three_classes_without_test_have_no_two_class_figures() -> None:
    classes = ["a", "b", "c"]
    val = report_dict(0, classes, "validation (used for selection: optimistic)")
    summary = evaluation_summary({"val": val}, CheckpointMeta(model={}, classes=classes))
    (only,) = summary.splits
    assert (only.split, only.label, only.images) == ("val", val["label"], 30)
    assert only.accuracy == Estimate(val["accuracy"], val["intervals"]["accuracy"])
    assert only.roc_auc == Estimate(val["roc_auc"], val["intervals"]["roc_auc"])
    assert (only.sensitivity, only.specificity, only.ppv, only.npv) == (None, None, None, None)
    assert only.ece == pytest.approx(val["calibration"]["ece"]) and only.ece_before is None
    assert (summary.rule, summary.threshold, summary.temperature, summary.chosen_on) == ("argmax", None, None, None)
    assert (summary.confidence, summary.resamples) == (0.95, 1000)


def test_test_comes_first_and_the_positive_class_figures_are_at_the_threshold(tmp_path: Path) -> None:
    classes = ["neg", "pos"]
    meta = CheckpointMeta(model=create_model("se_densenet_tiny", num_classes=2).config.to_dict(), classes=classes,
                          threshold=0.4, positive="pos", temperature=1.5,
                          decision={"threshold": "youden", "calibrate": "temperature", "chosen_on": "validation",
                                    "inference": "eager fp32"})  # fmt: skip
    results = {
        "val": report_dict(1, classes, "validation (used for selection)", positive=1, threshold=0.4),
        "test": report_dict(2, classes, "test (evaluated once, with what validation chose)", positive=1, threshold=0.4),
    }
    path = save_checkpoint(tmp_path / "best.safetensors", create_model("se_densenet_tiny", num_classes=2), meta)
    record_evaluation(path, meta, results)
    _, stored = read_checkpoint(path)
    assert stored.evaluation == meta.evaluation and stored.evaluation is not None
    test = results["test"]
    first = stored.evaluation.headline
    assert (first.split, first.label) == ("test", test["label"])
    assert first.sensitivity == Estimate(test["binary"]["sensitivity"], test["intervals"]["recall"]["pos"])
    assert first.specificity == Estimate(test["binary"]["specificity"], test["intervals"]["recall"]["neg"])
    assert first.ppv == Estimate(test["binary"]["ppv"]) and first.npv == Estimate(test["binary"]["npv"])
    assert [s.split for s in stored.evaluation.splits] == ["test", "val"]
    assert (stored.evaluation.threshold, stored.evaluation.positive, stored.evaluation.temperature) == (0.4, "pos", 1.5)
    assert (stored.evaluation.rule, stored.evaluation.inference) == ("youden", "eager fp32")


def test_nothing_is_recorded_without_best_weights_or_results(tmp_path: Path) -> None:
    meta = CheckpointMeta(model={}, classes=["a", "b"])
    record_evaluation(tmp_path / "missing.safetensors", meta, {"val": report_dict(0, ["a", "b"], "v")})
    assert meta.evaluation is None and not (tmp_path / "missing.safetensors").exists()
