"""Every subcommand as a user runs it: export, explain, compare, convert-keras, evaluate, --devices."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402

from sedensenet.cli import main  # noqa: E402
from sedensenet.engine.launch import torchrun_command  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    data = make_folder(tmp / "data", per_class=8)
    argv = ["train", "--data", str(data), "--model", "se_densenet_tiny", "--image-size", "16", "--epochs", "2",
            "--batch-size", "4", "--workers", "0", "--project", str(tmp / "runs"), "-q"]  # fmt: skip
    assert main(argv) == 0
    return tmp / "runs" / "train", data


def test_export_onnx_and_predict_on_it(trained: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, data = trained
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run), "--format", "onnx", "--output", str(onnx_path), "-q"]) == 0
    assert "max abs difference vs eager" in capsys.readouterr().out
    files = [str(p) for p in sorted((data / CLASSES[0]).glob("*.png"))[:3]]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["predict", str(onnx_path), *files, "--output", str(a), "--device", "cpu", "-q"]) == 0
    # float32 on both sides (ONNX Runtime runs float32; --amp auto would be bf16 on a bf16 CPU): compared to 1e-4
    assert main(["predict", str(run), *files, "--output", str(b), "--device", "cpu", "--amp", "off", "-q"]) == 0
    ra, rb = json.loads(a.read_text(encoding="utf-8")), json.loads(b.read_text(encoding="utf-8"))
    assert [r["label"] for r in ra] == [r["label"] for r in rb]
    assert all(abs(x["probability"] - y["probability"]) < 1e-4 for x, y in zip(ra, rb, strict=True))
    ts = tmp_path / "m.torchscript.pt"
    assert main(["export", str(run), "--format", "torchscript", "--output", str(ts), "-q"]) == 0 and ts.is_file()


def test_explain_gradcam_and_se_weights(trained: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, data = trained
    img = sorted((data / CLASSES[1]).glob("*.png"))[0]
    out = tmp_path / "explain"
    assert main(["explain", str(run), str(img), "--data", str(data), "--output", str(out), "--device", "cpu",
                 "--target", CLASSES[0], "-q"]) == 0  # fmt: skip
    assert (out / "gradcam_grid.png").is_file() and (out / "se_weights.png").is_file()
    with open(out / "se_weights.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == list(CLASSES)
    import sedensenet

    channels = sedensenet.load_model(run).features.se_head.channels
    assert len(rows[0]) == 1 + channels and all(len(r) == 1 + channels for r in rows)
    assert main(["explain", str(run), "--output", str(out), "-q"]) == 2
    assert "give image files" in capsys.readouterr().err


def test_compare_writes_table_for_every_model_and_seed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_folder(tmp_path / "data", per_class=6)
    argv = ["compare", "--data", str(data), "--models", "densenet_bc_100,se_densenet_tiny", "--seeds", "2",
            "--epochs", "1", "--image-size", "16", "--batch-size", "4", "--workers", "0",
            "--project", str(tmp_path / "runs"), "-q"]  # fmt: skip
    assert main(argv) == 0
    assert "Epoch 1/" not in capsys.readouterr().out  # the CLI keeps its own output (train's verbose=0)
    out = tmp_path / "runs" / "compare"
    md = (out / "compare.md").read_text(encoding="utf-8")
    assert "densenet_bc_100" in md and "se_densenet_tiny" in md and "ROC-AUC" in md
    with open(out / "compare.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["model"], r["seed"]) for r in rows) == [
        ("densenet_bc_100", "123"), ("densenet_bc_100", "124"), ("se_densenet_tiny", "123"), ("se_densenet_tiny", "124")
    ]  # fmt: skip
    assert (out / "val_curves.png").is_file()
    # the split is the same for every run: the same validation files
    supports = {json.loads((Path(r["run"]) / "metrics.json").read_text(encoding="utf-8"))["num_samples"] for r in rows}
    assert len(supports) == 1


def test_convert_keras_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "k.safetensors"
    assert main(["convert-keras", str(FIXTURES / "tf2_model.h5"), "--output", str(out), "--model",
                 "keras_se_densenet121", "--classes", "猫,狗", "-q"]) == 0  # fmt: skip
    assert out.is_file() and "Checkpoint written" in capsys.readouterr().out
    assert main(["convert-keras", str(FIXTURES / "tf2_model.h5"), "--output", str(out), "--blocks", "6,12,24,16",
                 "-q"]) == 2  # fmt: skip
    assert "error:" in capsys.readouterr().err


def test_evaluate_command_writes_reports(trained: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, data = trained
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", str(data), "--split", "val", "--output", str(out), "--device",
                 "cpu", "-q"]) == 0  # fmt: skip
    assert "accuracy" in capsys.readouterr().out
    for name in ("metrics.json", "confusion_matrix.png", "roc.png", "classification_report.txt"):
        assert (out / name).is_file(), name


def test_devices_flag_builds_a_torchrun_command() -> None:
    cmd = torchrun_command(4, ["train", "--data", "d", "--devices", "4", "--epochs", "2"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=4" in cmd and "--devices" not in cmd
    assert cmd[-5:] == ["train", "--data", "d", "--epochs", "2"]


@pytest.mark.slow
def test_compare_on_builtin_faces(tmp_path: Path) -> None:
    from sedensenet.compare import compare

    # At 16 px instead of the recommended 32: a quarter of the pixels; nothing asserted depends on the size.
    # Two steps of training each: what is asserted is the table's shape and the models' sizes, not their scores.
    result = compare("builtin:faces", ["densenet_bc_100", "se_densenet_bc_100"], seeds=2, epochs=1, max_steps=2,
                     project=str(tmp_path), workers=0, image_size=16)  # fmt: skip
    assert [r.model for r in result.rows] == ["densenet_bc_100", "se_densenet_bc_100"]
    assert all(len(r.val_accuracy) == len(r.roc_auc) == 2 for r in result.rows)
    assert result.rows[1].params - result.rows[0].params == 32_724  # the three SE layers (see test_densenet)
    with open(result.out_dir / "compare.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 4
