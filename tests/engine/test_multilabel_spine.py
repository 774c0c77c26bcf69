"""The multi-label spine without data: the masked loss, the checkpoint's per-label decisions, the one decision
function and the rows predict writes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sedensenet import checkpoint as ckpt
from sedensenet.checkpoint import CheckpointError, CheckpointMeta, LabelDecision
from sedensenet.config import ConfigError
from sedensenet.engine.decision import check_label_settings, decide_labels, fit_decision, postprocess
from sedensenet.engine.loop import MaskedBCEWithLogits, accuracy_of
from sedensenet.engine.predictor import Prediction, predictions_csv
from sedensenet.engine.tta import TTAModule
from sedensenet.models import create_model

NAN = math.nan


def test_masked_entries_count_in_no_loss() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, -2.0]])
    targets = torch.tensor([[1.0, NAN, 0.0], [NAN, 1.0, 0.0]])
    loss = MaskedBCEWithLogits()(logits, targets)
    known = ~targets.isnan()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[0, 1] = changed[1, 0] = 50.0  # a masked entry's logit moves: nothing changes
    assert MaskedBCEWithLogits()(changed, targets).item() == pytest.approx(loss.item(), rel=1e-6)
    weighted = MaskedBCEWithLogits(torch.tensor([3.0, 1.0, 1.0]))(logits, targets)
    manual = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets.nan_to_num(0), pos_weight=torch.tensor([3.0, 1.0, 1.0]), reduction="none"
    )[known].mean()
    assert weighted.item() == pytest.approx(manual.item(), rel=1e-6)
    per_sample = MaskedBCEWithLogits().per_sample(logits, targets)
    assert per_sample.shape == (2,) and per_sample[0].item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits[0, [0, 2]], targets[0, [0, 2]]).item(), rel=1e-6
    )


def test_binary_accuracy_skips_masked_entries() -> None:
    probs = np.array([[0.9, 0.2], [0.4, 0.7]])
    assert accuracy_of(probs, np.array([[1.0, NAN], [1.0, 1.0]])) == pytest.approx(2 / 3)
    assert accuracy_of(probs, np.array([0, 0])) == 0.5  # single-label: argmax


def _meta(**kw) -> CheckpointMeta:
    model = create_model("se_densenet_tiny", num_classes=3)
    return CheckpointMeta(model=model.config.to_dict(), classes=["积液", "Mass", "Nodule"], image_size=16,
                          task="multi", **kw)  # fmt: skip


def test_per_label_decisions_survive_the_checkpoint(tmp_path: Path) -> None:
    meta = _meta(labels=[LabelDecision("积液", 0.3, 1.5), LabelDecision("Mass", 0.7), LabelDecision("Nodule", 0.5)])
    model = create_model("se_densenet_tiny", num_classes=3)
    path = ckpt.save_checkpoint(tmp_path / "m.safetensors", model, meta)
    _, back = ckpt.read_checkpoint(path)
    assert back.task == "multi" and back.multilabel and back.labels == meta.labels
    probs = np.array([[0.31, 0.69, 0.5], [0.29, 0.71, 0.49]])
    calibrated = postprocess(probs, back)
    assert calibrated[0, 1:].tolist() == probs[0, 1:].tolist()  # no temperature: unchanged
    z = math.log(0.31 / 0.69) / 1.5
    assert calibrated[0, 0] == pytest.approx(1 / (1 + math.exp(-z)))
    assert decide_labels(probs, back).tolist() == [[True, False, True], [False, True, False]]


def test_single_label_metadata_is_written_as_before(tmp_path: Path) -> None:
    model = create_model("se_densenet_tiny", num_classes=2)
    meta = CheckpointMeta(model=model.config.to_dict(), classes=["a", "b"])
    text = ckpt.meta_to_json(meta)
    assert '"task"' not in text and '"labels"' not in text  # earlier versions read it unchanged
    assert ckpt.meta_from_json(text, "x").task == "single"


def test_bad_label_decisions_are_refused(tmp_path: Path) -> None:
    good = ckpt.meta_to_json(_meta(labels=[LabelDecision(n, 0.5) for n in ("积液", "Mass", "Nodule")]))
    for bad, message in ((good.replace('"Mass"', '"Masses"', 1), "do not match the classes"),
                         (good.replace('"threshold": 0.5', '"threshold": 2', 1), "must be a probability"),
                         (good.replace('"multi"', '"many"'), "task must be one of")):  # fmt: skip
        with pytest.raises(CheckpointError, match=message):
            ckpt.meta_from_json(bad, "m.safetensors")


def test_thresholds_are_chosen_per_label_on_validation() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < [0.2, 0.5, 0.05]).astype(float)
    probs = np.clip(y * 0.5 + rng.random((200, 3)) * 0.6, 0, 1)
    y[:20, 0] = NAN
    meta = _meta()
    decision = fit_decision(meta, y, probs, threshold="argmax", calibrate="temperature")  # argmax means f1 here
    assert decision["threshold"] == "f1" and decision["chosen_on"] == "validation"
    assert [d.name for d in meta.labels] == meta.classes
    assert all(0 < d.threshold < 1 and d.temperature is not None for d in meta.labels)
    fixed = _meta()
    fit_decision(fixed, None, None, threshold="0.4")
    assert [d.threshold for d in fixed.labels] == [0.4] * 3 and fixed.decision["chosen_on"] is None


def test_positive_and_unfittable_rules_are_refused_before_training() -> None:
    with pytest.raises(ConfigError, match="--positive Mass: a multi-label run decides each label on its own"):
        check_label_settings("argmax", "Mass", "none", has_validation=True)
    with pytest.raises(ConfigError, match="--threshold f1 is chosen per label on a validation split"):
        check_label_settings("argmax", "", "none", has_validation=False)
    check_label_settings("0.5", "", "none", has_validation=False)


def test_tta_averages_each_labels_probability() -> None:
    runner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    x = torch.randn(3, 3, 2, 2)
    out = TTAModule(runner, "flip", multilabel=True)(x).sigmoid()
    expected = (runner(x).sigmoid() + runner(x.flip(-1)).sigmoid()) / 2
    assert torch.allclose(out, expected, atol=1e-6)


def test_predict_rows_have_a_column_per_label_and_the_decided_set() -> None:
    preds = [Prediction("a.png", "Mass|积液", 0.9, labels=["Mass", "积液"], scores={"积液": 0.6, "Mass": 0.9}),
             Prediction("b.png", error="cannot read")]  # fmt: skip
    lines = predictions_csv(preds).splitlines()
    assert lines == ["path,labels,积液,Mass,error", "a.png,Mass|积液,0.6,0.9,", "b.png,,,,cannot read"]


def test_class_weights_auto_weighs_each_labels_positives_by_its_negatives() -> None:
    from sedensenet.data import DataSplits, Sample
    from sedensenet.engine.build import positive_weight_tensor

    rows = [(1.0, 0.0, NAN), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)]
    rows += [(0.0, 0.0, 0.0)] * 96  # label 0: 1 positive in 100 (capped at 20); label 1: none; label 2: 1 in 99
    splits = DataSplits(Path("."), ["a", "b", "c"], [Sample(Path(f"{i}.png"), r) for i, r in enumerate(rows)], [],
                        task="multi")  # fmt: skip
    assert positive_weight_tensor(splits).tolist() == [20.0, 1.0, 20.0]
    assert positive_weight_tensor(splits, cap=1000).tolist() == pytest.approx([99.0, 1.0, 98.0])


def test_label_smoothing_moves_each_known_target_towards_one_half() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.3]])
    targets = torch.tensor([[1.0, 0.0, NAN]])
    smoothed = MaskedBCEWithLogits(label_smoothing=0.2)(logits, targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :2], torch.tensor([0.9, 0.1]))
    assert smoothed.item() == pytest.approx(expected.item(), rel=1e-6)
