"""Data as it comes, end to end through the CLI: a manifest of image ids with a patient and a split column trains,
evaluates (its own split, no --data), predicts (the table's other columns written through), exports int8
(calibrated on its train rows, judged on its val rows), explains its SE weights on a split and is checked; a
DataFrame trains; a 16-bit MONOCHROME1 DICOM folder trains and predicts, grouped by patient, and the patient data
planted in its files is in no file the commands write and no server response."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("pydicom")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, PLANTED_PHI, make_dicom_folder, make_folder  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet.cli import main  # noqa: E402

FAST = ["--model", "se_densenet_tiny", "--image-size", "16", "--batch-size", "4", "--workers", "0",
        "--memory-efficient", "off", "--epochs", "1", "-q"]  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """图像/labels.csv: image ids without extension, dx, patient_id (two images each), split (patients 0 and 1 of
    each class in test, the others train: val is carved out of train, whole patients) and a clinician's
    ``probability`` column (a name predict also writes)."""
    root = make_folder(tmp_path_factory.mktemp("table") / "图像", per_class=12, size=16)
    table = root / "labels.csv"
    with open(table, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "dx", "patient_id", "split", "probability"])
        for name in CLASSES:
            for i in range(12):
                w.writerow([f"{name}/img {i}", name, f"{name}-{i // 2}", "test" if i < 4 else "train", "0.5"])
    return table


@pytest.fixture(scope="module")
def manifest_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("runs")
    assert main(["train", "--data", str(manifest), "--image-ext", ".png", "--project", str(project), *FAST]) == 0
    return project / "train"


def test_a_manifest_trains_with_its_split_and_patients(manifest_run: Path) -> None:
    rows = _rows(manifest_run / "split.csv")
    assert len(rows) == 24 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert sorted(r["path"] for r in rows if r["split"] == "test") == sorted(
        f"{name}/img {i}.png" for name in CLASSES for i in range(4)
    )
    sides: dict[str, set[str]] = {}
    for r in rows:
        sides.setdefault(r["group"], set()).add(r["split"])
    assert len(sides) == 12 and all(len(s) == 1 for s in sides.values())  # no patient on two sides


def test_evaluate_run_without_data_uses_the_runs_test_split(manifest_run: Path) -> None:
    assert main(["evaluate", str(manifest_run), "--split", "test", "--device", "cpu", "-q"]) == 0
    metrics = json.loads((manifest_run / "eval_test" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_samples"] == 8


def test_predict_writes_a_manifests_other_columns_through(manifest_run: Path, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    assert main(["predict", str(manifest_run), str(manifest), "--image-ext", ".png", "--output", str(out),
                 "--device", "cpu", "-q"]) == 0  # fmt: skip
    rows = _rows(out)
    assert len(rows) == 24 and all(not r["error"] and r["label"] in CLASSES for r in rows)
    assert list(rows[0])[-4:] == ["dx", "patient_id", "split", "input_probability"]
    assert rows[0]["input_probability"] == "0.5" and rows[0]["path"].endswith("img 0.png")


def test_export_int8_calibrates_on_the_runs_train_rows_and_judges_on_its_val_rows(
    manifest_run: Path, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    pytest.importorskip("onnxruntime")
    from sedensenet import quantize

    used: list[quantize.QuantData] = []
    real = quantize.quantize_onnx

    def spy(fp32: Path, int8: Path, meta: object, data: quantize.QuantData) -> quantize.QuantReport:
        used.append(data)
        return real(fp32, int8, meta, data)

    monkeypatch.setattr(quantize, "quantize_onnx", spy)
    out = tmp_path / "m.int8.onnx"
    # --force: a one-epoch model at 16 px may miss the agreement gate on 4 images; which images is what is tested
    assert main(["export", str(manifest_run), "--quantize", "int8", "--output", str(out), "--force"]) == 0
    assert out.is_file() and len(used) == 1
    rows = _rows(manifest_run / "split.csv")
    root = manifest.parent.resolve()

    def listed(paths: list[Path]) -> list[str]:
        return sorted(Path(p).resolve().relative_to(root).as_posix() for p in paths)

    train = sorted(r["path"] for r in rows if r["split"] == "train")
    val = sorted(r["path"] for r in rows if r["split"] == "val")
    assert len(train) + len(val) == 16 and val  # the 8 test rows neither calibrate nor judge
    assert listed(used[0].calibration) == train
    assert listed([s.path for s in used[0].evaluation]) == val
    labels = {Path(s.path).resolve().relative_to(root).as_posix(): CLASSES[s.label] for s in used[0].evaluation}
    assert labels == {r["path"]: r["class"] for r in rows if r["split"] == "val"}  # judged against the run's labels
    assert f"calibrated on {len(train)} images of {manifest} (training split)" in capsys.readouterr().out


def test_explain_se_weights_on_a_manifests_test_rows(manifest_run: Path, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "explain"
    assert main(["explain", str(manifest_run), "--data", str(manifest), "--split", "test", "--output", str(out),
                 "--device", "cpu", "-q"]) == 0  # fmt: skip
    summary = json.loads((out / "se_weights.json").read_text(encoding="utf-8"))
    assert summary["images_per_class"] == {name: 4 for name in CLASSES}  # the table's 8 test rows, 4 per class
    assert [r[0] for r in csv.reader(open(out / "se_weights.csv", encoding="utf-8"))][1:] == list(CLASSES)


def test_check_data_reads_a_manifest(manifest: Path, tmp_path: Path) -> None:
    assert main(["check-data", str(manifest), "--image-ext", ".png", "--output", str(tmp_path / "c"), "-q"]) == 0
    report = json.loads((tmp_path / "c" / "data_report.json").read_text(encoding="utf-8"))
    assert report["files"] == 24 and report["classes"] == list(CLASSES)


def test_a_dataframe_becomes_the_runs_manifest(manifest: Path, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"path": [str(manifest.parent / f"{n}/img {i}.png") for n in CLASSES for i in range(8)],
                          "label": [n for n in CLASSES for _ in range(8)]})  # fmt: skip
    result = sedensenet.train(frame, project=tmp_path, model="se_densenet_tiny", image_size=16, batch_size=4,
                              workers=0, epochs=1, max_steps=1, verbose=0, memory_efficient="off")  # fmt: skip
    assert result.run_dir == tmp_path / "train"
    assert _rows(result.run_dir / "manifest.csv") == [{k: str(v) for k, v in r.items()} for r in
                                                       frame.to_dict("records")]  # fmt: skip
    assert len(_rows(result.run_dir / "split.csv")) == 16


def _planted() -> list[bytes]:
    values = [*PLANTED_PHI.values(), "Zhang", "秘密", "MRN-7734"]
    return [v.encode() for v in values] + [v.encode("utf-16-le") for v in values]


def _assert_no_phi(folder: Path, *texts: str) -> None:
    found = [(p, v) for p in folder.rglob("*") if p.is_file() for v in _planted() if v in p.read_bytes()]
    found += [("output", v) for t in texts for v in _planted() if v in t.encode()]
    assert found == []


def test_a_dicom_folder_trains_predicts_and_leaks_no_patient_data(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from sedensenet.serve import create_app

    monkeypatch.setenv("SEDENSENET_HOME", str(tmp_path / "home"))  # the salt and the cache, inside tmp_path
    data = tmp_path / "films"
    rows = make_dicom_folder(data, per_class=8, bits=16, photometric="MONOCHROME1")
    out = tmp_path / "out"
    assert main(["train", "--data", str(data), "--project", str(out), "--cache", "-v", *FAST]) == 0
    run = out / "train"
    split = _rows(run / "split.csv")
    assert len(split) == 16 and all(r["group"].startswith("patient-") for r in split)
    sides: dict[str, set[str]] = {}
    for r in split:
        sides.setdefault(r["group"], set()).add(r["split"])
    assert len(sides) == 8 and "val" in set().union(*sides.values()) and all(len(s) == 1 for s in sides.values())
    # the planted patients, one side each
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu", "-v"]) == 0
    preds = out / "preds.csv"
    assert main(["predict", str(run), str(data), "--output", str(preds), "--device", "cpu", "-v"]) == 0
    predicted = _rows(preds)
    assert len(predicted) == len(rows) and all(not r["error"] and r["label"] in CLASSES for r in predicted)
    assert main(["check-data", str(data), "--output", str(out / "check"), "-v"]) == 0
    responses = []
    with TestClient(create_app(run, backend="eager")) as client:
        film = (data / rows[0][0]).read_bytes()
        r = client.post("/v1/predict", files=[("file", ("film.dcm", film, "application/dicom"))])
        assert r.status_code == 200, r.text
        responses += [r.text, client.get("/v1/model").text, client.get("/").text]
        r = client.post("/v1/explain", files=[("file", ("film.dcm", film, "application/dicom"))])
        responses.append(r.text)
    captured = capsys.readouterr()
    assert all(v in (data / rows[0][0]).read_bytes() for v in _planted()[:3])  # planted: the search can find them
    _assert_no_phi(out, *responses, captured.out, captured.err)
    _assert_no_phi(tmp_path / "home")


def test_serve_refuses_a_multiframe_dicom_with_a_reason(manifest_run: Path, tmp_path: Path) -> None:
    import numpy as np
    from fastapi.testclient import TestClient
    from imagegen import write_dicom

    from sedensenet.serve import create_app

    cine = write_dicom(tmp_path / "cine.dcm", np.zeros((3, 16, 16), dtype=np.uint16), bits_stored=12)
    with TestClient(create_app(manifest_run, backend="eager")) as client:
        r = client.post("/v1/predict", files=[("file", ("cine.dcm", cine.read_bytes(), "application/dicom"))])
    assert r.status_code == 415 and r.json()["error"] == "unsupported" and "frame" in r.json()["detail"]


def test_the_dicom_window_reaches_the_dataset_the_cache_and_the_checkpoint(tmp_path: Path) -> None:
    import numpy as np
    from imagegen import write_dicom

    from sedensenet.checkpoint import CheckpointMeta
    from sedensenet.config import ConfigError, TrainConfig
    from sedensenet.data import ImageFolderDataset, Sample
    from sedensenet.data.cache import ImageCache
    from sedensenet.engine import build, session

    ramp = np.tile(np.arange(0, 4096, 256, dtype=np.uint16), (16, 1))  # 0 .. 3840 across the columns
    film = Sample(write_dicom(tmp_path / "ramp.dcm", ramp, bits_stored=12), 0)
    config = TrainConfig(data=str(tmp_path), dicom_window="1024,512", in_chans=1)
    own = ImageFolderDataset([film], in_chans=1)[0][0][0, 0]
    windowed = build.make_dataset(config, [film], [0.0], [1.0], train=False).dicom
    narrow = ImageFolderDataset([film], in_chans=1, dicom=windowed)[0][0][0, 0]
    assert own[0] == 0 and own[-1] == 1  # min/max: the whole ramp
    assert narrow[:3].tolist() == [0, 0, 0] and narrow[6:].tolist() == [1] * 10  # 768..1280 spans columns 3-5
    plain = ImageCache.build([film], 16, 1, root=tmp_path / "cache")
    assert ImageCache.build([film], 16, 1, root=tmp_path / "cache", dicom=windowed).array_path != plain.array_path
    stored = CheckpointMeta(model={}, classes=["a", "b"], data=session.describe(config))
    assert stored.dicom_options().window == (1024.0, 512.0)
    with pytest.raises(ConfigError, match="--dicom-window '40': give CENTER,WIDTH"):
        TrainConfig(dicom_window="40")
