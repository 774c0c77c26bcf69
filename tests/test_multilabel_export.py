"""A multi-label model through export (ONNX, int8 with its per-label gate), explain and the notebook API (issue 26)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.text import Text
from PIL import Image

import sedensenet
from sedensenet import quantize
from sedensenet.checkpoint import CheckpointMeta, LabelDecision, load_checkpoint, save_checkpoint
from sedensenet.cli import main
from sedensenet.config import ConfigError, InferenceSettings
from sedensenet.data import Sample, load_image
from sedensenet.engine.predictor import Predictor
from sedensenet.explain import explain_image, explain_images, label_rows
from sedensenet.export import export_model
from sedensenet.models import create_model
from sedensenet.quantize import QuantData, QuantizationError, QuantReport
from sedensenet.reports.figures import InlineFigure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagegen import pattern_image  # noqa: E402

LABELS = ["effusion", "肿块", "nodule"]


@dataclass(frozen=True)
class MultiModel:
    checkpoint: Path
    images: list[Path]
    """16 generated PNGs (16 px), the two patterns of tests/imagegen.py alternating."""
    probs: np.ndarray
    """(16, 3) the eager model's sigmoid outputs on ``images``."""


def _model() -> torch.nn.Module:
    """The tiny SE-DenseNet with moved BN statistics and a sharper classifier, so the labels' outputs differ."""
    torch.manual_seed(0)
    model = create_model("se_densenet_tiny", num_classes=len(LABELS))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Linear):
                m.weight.mul_(10.0)
    return model.eval()


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> MultiModel:
    """A multi-label checkpoint whose thresholds are its outputs' medians on the images, so decisions vary."""
    root = tmp_path_factory.mktemp("multi")
    rng = np.random.default_rng(0)
    images = []
    for i in range(16):
        pattern_image(i % 2, rng, 16).save(root / f"img {i:02d}.png")
        images.append(root / f"img {i:02d}.png")
    model = _model()
    meta = CheckpointMeta(model=model.config.to_dict(), classes=LABELS, image_size=16, mean=[0.5] * 3,
                          std=[0.25] * 3, task="multi", labels=[LabelDecision(n, 0.5) for n in LABELS])  # fmt: skip
    probs = Predictor(model, meta).run_samples([Sample(p, 0) for p in images]).probs
    meta.labels = [LabelDecision(n, float(t)) for n, t in zip(LABELS, np.median(probs, 0), strict=True)]
    checkpoint = save_checkpoint(root / "weights" / "best.safetensors", model, meta)
    return MultiModel(checkpoint, images, probs)


def test_onnx_export_carries_the_labels_and_predicts_as_the_checkpoint(multi: MultiModel, tmp_path: Path) -> None:
    result = export_model(multi.checkpoint, output=tmp_path / "model.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert props["task"] == "multi" and json.loads(props["classes"]) == LABELS
    stored = json.loads(props["labels"])
    assert [d["name"] for d in stored] == LABELS
    assert [d["threshold"] for d in stored] == pytest.approx(np.median(multi.probs, 0).tolist())
    eager = Predictor.load(multi.checkpoint, InferenceSettings(backend="reference")).predict_files(multi.images)
    exported = Predictor.load(result.path)
    assert exported.meta.task == "multi" and exported.meta.labels == load_checkpoint(multi.checkpoint)[1].labels
    onnx_preds = exported.predict_files(multi.images)
    for a, b in zip(eager, onnx_preds, strict=True):
        assert b.labels == a.labels and b.label == a.label
        np.testing.assert_allclose(list(b.scores.values()), list(a.scores.values()), rtol=0, atol=1e-4)
    np.testing.assert_allclose([list(p.scores.values()) for p in eager], multi.probs, rtol=0, atol=1e-6)  # sigmoid
    assert {len(p.labels) for p in eager} != {0}  # the thresholds decide some labels present, not none


def _eval_data(multi: MultiModel) -> QuantData:
    """Calibrate on 8 images, judge on the other 8 (one label unknown, NaN, on half of them)."""
    truth = [(1.0, 0.0, math.nan) if i % 2 else (0.0, 1.0, 1.0) for i in range(8, 16)]
    held = [Sample(p, y) for p, y in zip(multi.images[8:], truth, strict=True)]
    return QuantData(multi.images[:8], "calib", held, "held")


def test_int8_gate_is_measured_per_label(multi: MultiModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize, "choose_images", lambda *args, **kwargs: _eval_data(multi))
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 0.0)  # every label passes a bar of 0: written without --force
    q = export_model(multi.checkpoint, quantize="int8").quantization
    assert q["task"] == "multi" and list(q["per_label"]) == LABELS and q["eval_images"] == 8
    int8_predictor = Predictor.load(multi.checkpoint.with_suffix(".int8.onnx"))
    assert int8_predictor.meta.labels == load_checkpoint(multi.checkpoint)[1].labels  # decides as the checkpoint
    int8 = int8_predictor.predict_files(multi.images[8:])
    fp32 = Predictor.load(multi.checkpoint, InferenceSettings(backend="reference")).predict_files(multi.images[8:])
    for name in LABELS:  # the figures, recomputed from the two models' own predictions
        row = q["per_label"][name]
        same = np.mean([(name in a.labels) == (name in b.labels) for a, b in zip(int8, fp32, strict=True)])
        diff = np.mean([abs(a.scores[name] - b.scores[name]) for a, b in zip(int8, fp32, strict=True)])
        assert row["agreement"] == pytest.approx(same) and row["mean_abs_diff"] == pytest.approx(diff, abs=1e-5)
        assert 0 < row["mean_abs_diff"] < 0.01 and row["passed"]
    lowest = min(row["agreement"] for row in q["per_label"].values())
    assert q["agreement"] == lowest
    assert (q["per_label"]["nodule"]["known"], q["per_label"]["effusion"]["known"]) == (4, 8)  # NaN: not scored

    monkeypatch.setattr(quantize, "MIN_AGREEMENT", lowest + 1e-9)  # only the lowest label(s) fall under the bar
    failing = ", ".join(f"{n} {r['agreement']:.2%}" for n, r in q["per_label"].items() if r["agreement"] == lowest)
    with pytest.raises(QuantizationError, match=f"required for label.s.: {failing}; nothing was written"):
        export_model(multi.checkpoint, quantize="int8", output=multi.checkpoint.parent / "refused.onnx")
    assert not (multi.checkpoint.parent / "refused.onnx").exists()


def test_cli_int8_export_prints_each_label(
    multi: MultiModel, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(quantize, "choose_images", lambda *args, **kwargs: _eval_data(multi))
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)
    assert main(["export", str(multi.checkpoint), "--quantize", "int8", "--force", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "decisions' agreement, lowest label " in lines[0] and "top-1" not in lines[0]
    assert [line.split(":")[0] for line in lines[1:4]] == [f"  {n}" for n in LABELS]
    assert lines[4].startswith("onnx int8 written: ")


def test_int8_report_names_only_the_labels_under_the_bar() -> None:
    rows = {name: {"agreement": a, "mean_abs_diff": 0.01, "passed": a >= 0.99} for name, a in
            zip(LABELS, [1.0, 0.95, 0.98], strict=True)}  # fmt: skip
    report = QuantReport(8, "calib", 20, "held", 0.95, 0.9, 0.88, per_label=rows)
    assert report.failing_labels() == ["肿块", "nodule"]
    assert report.to_dict()["per_label"] == rows and "per_label" not in QuantReport(8, "c", 20, "h", 1, 1, 1).to_dict()


def test_int8_evaluation_labels_follow_the_model_order() -> None:
    meta = CheckpointMeta(model={}, classes=LABELS, task="multi")
    samples = [Sample(Path("a.png"), (1.0, 0.0)), Sample(Path("b.png"), (math.nan, 1.0))]
    relabelled = quantize._relabel(samples, ["nodule", "effusion"], meta)
    assert [s.label[0] for s in relabelled] == [0.0, 1.0]  # effusion
    assert relabelled[0].label[2] == 1.0 and math.isnan(relabelled[1].label[2])  # nodule, NaN (ignored) kept
    assert all(math.isnan(s.label[1]) for s in relabelled)  # 肿块 is not in the data: ignored
    with pytest.raises(QuantizationError, match=r"label\(s\) \['cat'\] are not labels of this model"):
        quantize._relabel(samples, ["cat", "nodule"], meta)
    with pytest.raises(QuantizationError, match="judged on multi-label data"):
        quantize._relabel([Sample(Path("a.png"), 0)], ["nodule"], meta)


def test_explain_maps_the_target_labels_logit(multi: MultiModel, tmp_path: Path) -> None:
    image = multi.images[3]
    maps = {name: explain_images(multi.checkpoint, [image], tmp_path / name, target=name).images[0] for name in LABELS}
    assert [(e.target, e.reason) for e in maps.values()] == [(n, "given") for n in LABELS]
    pixels = {n: np.asarray(Image.open(e.output), dtype=np.float64) for n, e in maps.items()}
    assert np.abs(pixels["effusion"] - pixels["nodule"]).mean() > 1.0
    assert np.abs(pixels["effusion"] - pixels["肿块"]).mean() > 1.0
    assert maps["nodule"].probability == pytest.approx(multi.probs[3, 2], abs=1e-5)  # the sigmoid, not a softmax
    assert maps["nodule"].title.startswith("decided: ") and "map: nodule (" in maps["nodule"].title
    with pytest.raises(
        ConfigError, match=r"unknown target label 'cat'; choose one of \['effusion', '肿块', 'nodule'\]"
    ):
        explain_images(multi.checkpoint, [image], tmp_path / "x", target="cat")


def test_explain_by_default_maps_each_decided_label(multi: MultiModel, tmp_path: Path) -> None:
    model, meta = load_checkpoint(multi.checkpoint)
    meta.labels = [LabelDecision(n, float(t) + 1e-4) for n, t in zip(LABELS, multi.probs[0], strict=True)]
    checkpoint = save_checkpoint(tmp_path / "none_for_image_0.safetensors", model, meta)  # image 0: none decided
    preds = Predictor.load(checkpoint, InferenceSettings(backend="reference")).predict_files(multi.images[:6])
    result = explain_images(checkpoint, multi.images[:6], tmp_path / "out")
    expected = []
    for p in preds:  # each decided label, most probable first; the most probable label when none is decided
        shown = p.labels or [max(p.scores, key=p.scores.get)]
        expected += [(Path(p.path), label, "decided" if p.labels else "most probable, none decided") for label in shown]
    assert [(e.source, e.target, e.reason) for e in result.images] == expected
    assert result.images[0].reason == "most probable, none decided" and len(result.images) > 6  # several labels
    assert result.images[0].title.startswith("decided: none\nmap: ")
    last = result.images[-1]
    assert last.output.name == f"{last.source.stem}_{last.target}_gradcam.png" and last.output.is_file()
    assert last.labels == preds[-1].labels and last.predicted == preds[-1].label
    assert result.grid is not None and result.grid.is_file()
    x = Predictor.load(checkpoint).preprocess(load_image(multi.images[5]))
    explained = explain_image(model, x)  # serve's one map: the most probable decided label
    assert LABELS[explained.target] == preds[5].labels[0]
    np.testing.assert_allclose(explained.probs, list(preds[5].scores.values()), atol=1e-5)


def test_se_gates_of_a_multilabel_set_are_grouped_by_label() -> None:
    gates = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    targets = np.array([[1.0, 1.0, 0.0], [0.0, math.nan, 1.0], [0.0, 0.0, 0.0]])
    rows, labels = label_rows(gates, targets)
    np.testing.assert_array_equal(rows, gates[[0, 0, 1]])
    assert labels.tolist() == [0, 1, 2]  # image 0 in labels 0 and 1, image 1 in label 2, image 2 in none


def _bars(fig: InlineFigure) -> list[tuple[list[str], list[str], int]]:
    """Per drawn chart: its bar names (top first), the names drawn in colour, and the threshold marks."""
    charts = [ax for ax in fig.axes if ax.patches]
    out = []
    for ax in charts:
        names = [t.get_text() for t in ax.get_yticklabels()]
        coloured = [n for n, bar in zip(names, ax.patches, strict=True) if to_hex(bar.get_facecolor()) != "#bfbfbf"]
        out.append((names, coloured, len(ax.collections)))
    return out


def test_notebook_predictions_show_the_decided_labels_and_plot(multi: MultiModel, tmp_path: Path) -> None:
    files = [*multi.images[:3], tmp_path / "missing.png"]
    preds = sedensenet.predict(multi.checkpoint, files, device="cpu")
    lines = repr(preds).splitlines()
    assert lines[0] == "4 predictions, 3 labels" and lines[1].split() == ["path", "labels", *LABELS, "error"]
    rows = preds.table().rows
    assert rows[1] == [str(files[1]), ", ".join(preds[1].labels), *(preds[1].scores[n] for n in LABELS), ""]
    assert rows[3][:2] == [str(files[3]), ""] and rows[3][-1].startswith("unreadable")
    thresholds = ", ".join(f"{n} {t:.4f}" for n, t in zip(LABELS, np.median(multi.probs, 0), strict=True))
    assert lines[-1] == f"decided at each label's threshold: {thresholds}"
    html = preds._repr_html_()
    assert "<th>肿块</th>" in html and f"<td>{', '.join(preds[1].labels)}</td>" in html
    fig = preds.plot()
    assert isinstance(fig, InlineFigure) and fig._repr_png_().startswith(b"\x89PNG")
    drawn = _bars(fig)
    assert len(drawn) == 3  # the unreadable file gets a caption, no bars
    for (names, coloured, marks), p in zip(drawn, preds, strict=False):
        assert names == LABELS and coloured == [n for n in LABELS if n in p.labels] and marks == len(LABELS)
    captions = {t.get_text() for t in fig.findobj(Text)}
    assert {f"{Path(p.path).name}\n{', '.join(p.labels) or 'none decided'}" for p in preds[:3]} <= captions
    assert "missing.png\nerror: unreadable: file not found (deleted, or a broken link)" in captions


def test_notebook_plot_of_a_single_label_model(multi: MultiModel, tmp_path: Path) -> None:
    model = create_model("se_densenet_tiny", num_classes=2)
    meta = CheckpointMeta(model=model.config.to_dict(), classes=["cat", "dog"], image_size=16)
    checkpoint = save_checkpoint(tmp_path / "single.safetensors", model, meta)
    preds = sedensenet.predict(checkpoint, multi.images[:2], top_k=2, device="cpu")
    assert repr(preds).splitlines()[1].split() == ["path", "label", "probability", "top-k"]  # as before
    drawn = _bars(preds.plot(ncols=1))
    assert [(names, coloured, marks) for names, coloured, marks in drawn] == [
        ([c for c, _ in p.top_k], [p.label], 0) for p in preds
    ]


def test_cli_explain_target_label(multi: MultiModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, out = multi.images[1], tmp_path / "explain"
    assert main(["explain", str(multi.checkpoint), str(image), "--target", "肿块", "--output", str(out), "-q"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{image}\tlabels ") and f"\tmap 肿块 ({multi.probs[1, 1]:.3f}, given)\t-> " in line
    assert (out / "img 01_肿块_gradcam.png").is_file()
    assert main(["explain", str(multi.checkpoint), str(image), "--target", "cat", "--output", str(out), "-q"]) == 2
    assert "unknown target label 'cat'; choose one of ['effusion', '肿块', 'nodule']" in capsys.readouterr().err
