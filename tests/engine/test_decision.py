"""The decision stored in a checkpoint (temperature, threshold, positive class) is the one predict and evaluate
make; a training run chooses it on validation and labels its figures honestly; bad settings fail before any work."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet import checkpoint as ckpt  # noqa: E402
from sedensenet.cli import main  # noqa: E402
from sedensenet.config import ConfigError, InferenceSettings  # noqa: E402
from sedensenet.engine.decision import check_decision_settings, decide, fit_decision, postprocess  # noqa: E402
from sedensenet.engine.predictor import Predictor  # noqa: E402
from sedensenet.reports import apply_temperature  # noqa: E402

FAST = ["--model", "se_densenet_tiny", "--image-size", "16", "--batch-size", "8", "--workers", "0", "-q"]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A two-class checkpoint without a decision, a folder of 10 images, and the model's raw P(猫) per file."""
    root = tmp_path_factory.mktemp("decision")
    data = make_folder(root / "data", per_class=5)
    model = sedensenet.create_model("se_densenet_tiny", num_classes=2)
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), classes=list(CLASSES), image_size=16)
    path = ckpt.save_checkpoint(root / "plain.safetensors", model, meta)
    files = sorted(data.rglob("*.png"))
    predictor = Predictor.load(path, InferenceSettings(device="cpu"))
    raw = predictor.run_samples([sedensenet.data.Sample(f, 0) for f in files], 4).probs
    return path, data, raw


def _with(path: Path, out: Path, **fields: object) -> Path:
    model, meta = ckpt.load_checkpoint(path)
    return ckpt.save_checkpoint(out, model, dataclasses.replace(meta, **fields))


def test_a_checkpoint_with_a_threshold_makes_predict_decide_by_it(model_and_data: tuple, tmp_path: Path) -> None:
    path, data, raw = model_and_data
    files = sorted(data.rglob("*.png"))
    p_cat = raw[:, 1].astype(np.float64)
    cut = float(np.sort(p_cat)[3])  # about four files below, six at or above (ties)
    expected = [CLASSES[1] if p >= cut else CLASSES[0] for p in p_cat]
    thresholded = _with(path, tmp_path / "t.safetensors", threshold=cut, positive=CLASSES[1])
    preds = sedensenet.predict(thresholded, files, device="cpu")
    assert [p.label for p in preds] == expected
    assert 0 < expected.count(CLASSES[0]) < 10  # the threshold splits the files...
    assert expected != [CLASSES[i] for i in raw.argmax(1)]  # ...otherwise than the argmax does
    assert [p.probability for p in preds] == pytest.approx(
        [r[CLASSES.index(p.label)] for p, r in zip(preds, raw, strict=True)]
    )
    # the extremes: everything, then nothing, is called positive
    all_cat = _with(path, tmp_path / "all.safetensors", threshold=0.0, positive=CLASSES[1])
    assert {p.label for p in sedensenet.predict(all_cat, files, device="cpu")} == {CLASSES[1]}
    no_cat = _with(path, tmp_path / "none.safetensors", threshold=float(np.nextafter(1.0, 2)), positive=CLASSES[1])
    assert {p.label for p in sedensenet.predict(no_cat, files, device="cpu")} == {CLASSES[0]}
    # evaluate decides the same way, and says so
    report = sedensenet.evaluate(thresholded, data, split="all", output=tmp_path / "eval", device="cpu")
    y = np.array([CLASSES.index(f.parent.name) for f in files])
    decided = np.array([CLASSES.index(c) for c in expected])
    assert report.accuracy == pytest.approx(float((decided == y).mean()))
    assert report.threshold == cut and report.positive_class == CLASSES[1]
    for name in ("pr.png", "calibration.png", "roc.png", "metrics.json"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000 or name == "metrics.json"


def test_a_temperature_in_the_checkpoint_scales_predict_probabilities(model_and_data: tuple, tmp_path: Path) -> None:
    path, data, raw = model_and_data
    files = sorted(data.rglob("*.png"))
    scaled = _with(path, tmp_path / "t.safetensors", temperature=0.25)
    preds = sedensenet.predict(scaled, files, device="cpu", top_k=2)
    expected = apply_temperature(raw, 0.25)
    got = np.array([[dict(p.top_k)[c] for c in CLASSES] for p in preds])
    assert got == pytest.approx(expected, abs=1e-6)
    assert [p.label for p in preds] == [CLASSES[i] for i in raw.argmax(1)]  # temperature never moves the argmax


def test_postprocess_and_decide_are_what_predict_applies() -> None:
    meta = ckpt.CheckpointMeta(model={}, classes=["neg", "pos"], temperature=2.0, threshold=0.6, positive="pos")
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    scaled = postprocess(probs, meta)  # P(pos): .2 -> 1/3, .7 -> .604, .55 -> .525
    assert scaled[:, 1] == pytest.approx([1 / 3, 0.7**0.5 / (0.7**0.5 + 0.3**0.5), 0.55**0.5 / (0.55**0.5 + 0.45**0.5)])
    assert decide(scaled, meta).tolist() == [0, 1, 0]
    meta.positive = "neg"  # the threshold applies to the named class: P(neg) = 2/3, .396, .475
    assert decide(scaled, meta).tolist() == [0, 1, 1]


def test_fit_decision_chooses_on_calibrated_validation_outputs() -> None:
    meta = ckpt.CheckpointMeta(model={}, classes=["neg", "pos"])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p_pos = np.array([0.6, 0.5, 0.2, 0.1, 0.9, 0.8, 0.7, 0.4])
    probs = np.stack([1 - p_pos, p_pos], 1)
    info = fit_decision(meta, y, probs, threshold="youden", calibrate="temperature", inference="eager float32")
    assert meta.positive == "pos" and meta.temperature is not None and meta.temperature > 0
    assert meta.threshold == pytest.approx(postprocess(probs, meta)[6, 1])  # the .7 sample, calibrated
    assert info == {"threshold": "youden", "calibrate": "temperature", "chosen_on": "validation",
                    "inference": "eager float32"}  # fmt: skip
    fit_decision(meta, None, None, threshold="0.3")  # a fixed threshold needs no validation
    assert (meta.threshold, meta.temperature, meta.decision["chosen_on"]) == (0.3, None, None)


def test_old_checkpoints_load_without_a_decision(model_and_data: tuple, tmp_path: Path) -> None:
    path, _, _ = model_and_data
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["sedensenet"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key in ("temperature", "threshold", "positive", "decision"):
        header.pop(key)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"sedensenet": json.dumps(header)})
    _, meta = ckpt.load_checkpoint(old)
    assert (meta.temperature, meta.threshold, meta.positive, meta.decision) == (None, None, None, {})
    header.update(threshold="high", positive=CLASSES[1])
    save_file(tensors, str(old), metadata={"sedensenet": json.dumps(header)})
    with pytest.raises(ckpt.CheckpointError, match="threshold must be a probability, got 'high'"):
        ckpt.load_checkpoint(old)


def test_evaluate_refuses_a_positive_class_the_threshold_is_not_about(model_and_data: tuple, tmp_path: Path) -> None:
    path, data, _ = model_and_data
    thresholded = _with(path, tmp_path / "t.safetensors", threshold=0.5, positive=CLASSES[1])
    with pytest.raises(ValueError, match=f"threshold 0.5000 is about '{CLASSES[1]}'"):
        sedensenet.evaluate(thresholded, data, split="all", device="cpu", positive=CLASSES[0])
    with pytest.raises(ValueError, match="'鸟' is not a class"):
        sedensenet.evaluate(path, data, split="all", device="cpu", positive="鸟")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threshold", "sens=0"], "--threshold 'sens=0': sens= must be in (0, 1]"),
        (["--threshold", "youden"], "--threshold youden: a positive class and an operating threshold need a two-class"),
        (["--positive", "猫"], "--positive 猫: a positive class and an operating threshold need a two-class problem"),
    ],
)
def test_bad_decision_settings_fail_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    data = make_folder(tmp_path / "data", per_class=3)
    make_folder(tmp_path / "more", per_class=3)
    (tmp_path / "more" / CLASSES[0]).rename(data / "鸟")
    project = tmp_path / "runs"
    assert main(["train", "--data", str(data), "--project", str(project), "--epochs", "1", *FAST, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (project / "train").exists()  # no run folder: nothing was built or trained


def test_unknown_positive_and_no_validation_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_folder(tmp_path / "data", per_class=4)
    project = tmp_path / "runs"
    base = ["train", "--data", str(data), "--project", str(project), "--epochs", "1", *FAST]
    assert main([*base, "--positive", "鸟"]) == 2
    assert f"--positive '鸟' is not a class; choose one of {list(CLASSES)}" in capsys.readouterr().err
    assert main([*base, "--val-split", "0", "--threshold", "spec=0.9"]) == 2
    assert "--threshold spec=0.9 is chosen on a validation split and this run has none" in capsys.readouterr().err
    assert main([*base, "--val-split", "0", "--calibrate", "temperature"]) == 2
    assert "--calibrate temperature is fitted on a validation split" in capsys.readouterr().err
    assert not (project / "train").exists()


def test_train_chooses_on_validation_and_applies_it_unchanged_to_test(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        make_folder(data / split, per_class=8 if split == "train" else 6, seed=seed)
    project = tmp_path / "runs"
    argv = ["train", "--data", str(data), "--project", str(project), "--epochs", "1", *FAST]
    assert main([*argv, "--threshold", "youden", "--calibrate", "temperature", "--positive", CLASSES[0]]) == 0
    out = capsys.readouterr().out
    run = project / "train"
    _, meta = ckpt.read_checkpoint(run / "weights" / "best.safetensors")
    assert meta.positive == CLASSES[0] and meta.threshold is not None and meta.temperature is not None
    assert meta.decision["chosen_on"] == "validation" and meta.decision["inference"].endswith("fp32")
    val = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    test = json.loads((run / "test" / "metrics.json").read_text(encoding="utf-8"))
    assert val["label"] == "validation (used for selection)"
    assert test["label"] == "test (evaluated once, with what validation chose)"
    assert val["threshold"] == test["threshold"] == meta.threshold
    assert test["calibration"]["temperature"] == meta.temperature and "ece_before" in test["calibration"]
    assert set(test["intervals"]) >= {"accuracy", "balanced_accuracy", "roc_auc", "recall"}
    for name in ("pr.png", "calibration.png", "roc.png"):
        assert (run / "test" / name).is_file() and (run / name).is_file()
    assert "test (evaluated once, with what validation chose), 12 images:" in out
    assert f"sensitivity ({CLASSES[0]})" in out and "calibration: ECE" in out and "accuracy " in out
    # predict on the test images makes exactly the decisions the test report counted
    files = sorted((data / "test").rglob("*.png"))
    preds = sedensenet.predict(run, files, device="cpu")
    y = np.array([CLASSES.index(f.parent.name) for f in files])
    decided = np.array([CLASSES.index(p.label) for p in preds])
    cm = [[int(((y == t) & (decided == p)).sum()) for p in range(2)] for t in range(2)]
    assert test["confusion_matrix"] == cm


def test_without_a_test_split_validation_is_labelled_optimistic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_folder(tmp_path / "data", per_class=10)
    project = tmp_path / "runs"
    assert main(["train", "--data", str(data), "--project", str(project), "--epochs", "1", *FAST]) == 0
    assert "validation (used for selection: optimistic), 4 images:" in capsys.readouterr().out
    metrics = json.loads((project / "train" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["label"] == "validation (used for selection: optimistic)"
    assert metrics["threshold"] is None and metrics["positive_class"] == CLASSES[1]


def test_check_decision_settings_needs_both_classes_in_validation_for_a_chosen_threshold() -> None:
    classes = ["neg", "pos"]
    check_decision_settings("youden", "", "none", classes, [0, 1, 1])
    check_decision_settings("0.4", "pos", "none", classes, [])  # a fixed threshold needs no validation
    with pytest.raises(ConfigError, match="--threshold sens=0.9 is chosen on validation, and the validation split"):
        check_decision_settings("sens=0.9", "", "none", classes, [1, 1, 1])
    with pytest.raises(ConfigError, match="--calibrate temperature is fitted on a validation split"):
        check_decision_settings("argmax", "", "temperature", classes, [])
