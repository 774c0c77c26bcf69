"""``sedensenet cv`` as a user runs it: fold runs, the summary files, resuming, bad input refused before any work;
``compare --folds``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402

from sedensenet.cli import main  # noqa: E402

TINY = ["--model", "se_densenet_tiny", "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("cv")
    data = make_folder(root / "数据", per_class=7)
    argv = ["cv", "--data", str(data), "--folds", "3", *TINY, "--tta", "flip", "--threshold", "youden", "--calibrate",
            "temperature", "--project", str(root / "runs"), "-q"]  # fmt: skip
    assert main(argv) == 0
    return root / "runs" / "cv" / "数据", data, argv


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_cv_writes_fold_runs_and_the_summary(cv_run: tuple[Path, Path, list[str]]) -> None:
    out, data, _ = cv_run
    for k in (1, 2, 3):
        fold = out / f"fold_{k}"
        for name in ("config.yaml", "weights/best.safetensors", "metrics.json", "test/metrics.json"):
            assert (fold / name).is_file(), (k, name)
        test = json.loads((fold / "test" / "metrics.json").read_text(encoding="utf-8"))
        val = json.loads((fold / "metrics.json").read_text(encoding="utf-8"))
        assert test["tta"] == "flip" and test["split"] == "test"
        # threshold and temperature chosen on the fold's own val part, applied unchanged to its held-out fold
        assert test["decision"]["chosen_on"] == "validation" and test["decision"]["threshold"] == "youden"
        assert test["threshold"] == val["threshold"] is not None
        assert test["calibration"]["temperature"] == val["calibration"]["temperature"] is not None
    oof = _rows(out / "oof.csv")
    files = sorted(str(p) for p in data.rglob("*.png"))
    assert sorted(r["path"] for r in oof) == files  # every image held out exactly once
    assert sorted({r["fold"] for r in oof}) == ["1", "2", "3"]
    assert {r["label"] for r in oof} == set(CLASSES)
    for r in oof:
        assert abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-4
    table = {r["row"]: r for r in _rows(out / "cv.csv")}
    assert list(table) == ["fold_1", "fold_2", "fold_3", "mean", "std", "ci95_low", "ci95_high", "pooled_out_of_fold"]
    accs = [float(table[f"fold_{k}"]["accuracy"]) for k in (1, 2, 3)]
    assert float(table["mean"]["accuracy"]) == pytest.approx(sum(accs) / 3, abs=1e-6)
    low, mean, high = (float(table[row]["accuracy"]) for row in ("ci95_low", "mean", "ci95_high"))
    assert low <= mean <= high
    md = (out / "cv.md").read_text(encoding="utf-8")
    assert "| accuracy |" in md and "| roc_auc |" in md and "pooled out-of-fold" in md and "TTA flip" in md
    assert "| threshold |" in md and "| temperature |" in md and "| sensitivity |" in md
    oof_accuracy = sum(r["label"] == r["predicted"] for r in oof) / len(oof)
    assert float(table["pooled_out_of_fold"]["accuracy"]) == pytest.approx(oof_accuracy, abs=1e-6)
    assert json.loads((out / "cv.json").read_text(encoding="utf-8"))["pooled_out_of_fold_intervals"]["accuracy"]
    assert (out / "roc.png").stat().st_size > 0


def test_rerun_continues_only_unfinished_folds(cv_run: tuple[Path, Path, list[str]], capsys) -> None:
    out, _, argv = cv_run
    done = (out / "fold_1" / "weights" / "best.safetensors").stat().st_mtime_ns
    # fold 2 killed after its last epoch, before its final reports; fold 3 never started
    (out / "fold_2" / "metrics.json").unlink()
    (out / "fold_2" / "test" / "metrics.json").unlink()
    import shutil

    shutil.rmtree(out / "fold_3")
    capsys.readouterr()
    assert main(argv[:-1]) == 0  # without -q: the log on stderr
    assert (out / "fold_1" / "weights" / "best.safetensors").stat().st_mtime_ns == done
    err = capsys.readouterr().err
    assert f"resuming {out / 'fold_2'}" in err and f"{out / 'fold_1'} is finished" in err
    assert (out / "fold_3" / "test" / "metrics.json").is_file() and len(_rows(out / "oof.csv")) == 14


def test_rerun_with_other_settings_is_refused(cv_run: tuple[Path, Path, list[str]], capsys) -> None:
    out, _, argv = cv_run
    assert main([*argv, "--lr", "0.01"]) == 2
    assert "started with other settings (lr 0.001 -> 0.01)" in capsys.readouterr().err


def test_bad_folds_and_groups_are_refused_before_any_work(tmp_path: Path, capsys) -> None:
    data = make_folder(tmp_path / "d", per_class=3)
    project = tmp_path / "runs"
    assert main(["cv", "--data", str(data), "--folds", "4", *TINY, "--project", str(project), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--folds 4 is more than class" in err and "it has 3 images" in err and "--folds 3 or fewer" in err
    assert not project.exists()
    assert main(["cv", "--data", str(data), "--folds", "3", "--fold", "2", *TINY, "--project", str(project)]) == 2
    assert "cv trains every fold" in capsys.readouterr().err


def test_compare_folds_cross_validates_each_model(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", per_class=6)
    argv = ["compare", "--data", str(data), "--models", "densenet_bc_100,se_densenet_tiny", "--folds", "2",
            "--epochs", "1", "--image-size", "16", "--batch-size", "4", "--workers", "0",
            "--project", str(tmp_path / "runs"), "-q"]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "runs" / "compare"
    rows = _rows(out / "compare.csv")
    assert sorted((r["model"], r["fold"]) for r in rows) == [
        ("densenet_bc_100", "1"), ("densenet_bc_100", "2"), ("se_densenet_tiny", "1"), ("se_densenet_tiny", "2")
    ]  # fmt: skip
    held_out = [json.loads((Path(r["run"]) / "test" / "metrics.json").read_text(encoding="utf-8")) for r in rows]
    assert [h["num_samples"] for h in held_out] == [6, 6, 6, 6]
    assert [float(r["test_accuracy"]) for r in rows] == [h["accuracy"] for h in held_out]
    assert "held-out accuracy | 95% interval" in (out / "compare.md").read_text(encoding="utf-8")


def test_evaluating_a_fold_model_on_its_test_split_reproduces_its_held_out_fold(
    cv_run: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    out, data, _ = cv_run
    fold = out / "fold_2"
    assert main(["evaluate", str(fold), "--data", str(data), "--split", "test", "--tta", "flip", "--device", "cpu",
                 "--output", str(tmp_path / "e"), "-q"]) == 0  # fmt: skip
    again = _rows(tmp_path / "e" / "predictions.csv")
    held_out = _rows(fold / "test" / "predictions.csv")
    assert [r["path"] for r in again] == [r["path"] for r in held_out]
    for a, b in zip(again, held_out, strict=True):
        assert abs(float(a[f"p_{CLASSES[0]}"]) - float(b[f"p_{CLASSES[0]}"])) < 1e-4


def test_summary_is_mean_sample_std_and_a_t_interval_clipped_to_the_bounds() -> None:
    from sedensenet.compare import summarize

    s = summarize([0.8, 0.9, 1.0, None, float("nan")])
    half = 4.302652729911275 * 0.1 / 3**0.5  # t(0.975, 2 degrees of freedom) * std / sqrt(n)
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.9), pytest.approx(0.1))
    assert (s.low, s.high) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))
    assert summarize([0.8, 0.9, 1.0], (0.0, 1.0)).high == 1.0
    assert summarize([0.7]).text() == "0.7000 ± 0.0000" and summarize([0.7]).interval() == "-"
    assert summarize([]).text() == "-"


def _write_groups(data: Path, path: Path, skip: int = 0) -> Path:
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    rows = [f"{f},patient{int(f.split()[-1].split('.')[0]) % 7}" for f in files if "copy" not in f]
    rows += [f"{f},patient0" for f in files if "copy" in f]
    path.write_text("file,group\n" + "\n".join(rows[skip:]) + "\n", encoding="utf-8")
    return path


def test_groups_and_duplicates_stay_in_one_fold(tmp_path: Path) -> None:
    import shutil

    data = make_folder(tmp_path / "d", per_class=7)
    shutil.copy(data / CLASSES[1] / "img 3.png", data / CLASSES[1] / "img 3 copy.png")  # an exact duplicate
    groups = _write_groups(data, tmp_path / "groups.csv")
    argv = ["cv", "--data", str(data), "--folds", "3", *TINY, "--groups", str(groups), "--project",
            str(tmp_path / "runs"), "-q"]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "runs" / "cv" / "d"
    oof = _rows(out / "oof.csv")
    assert len(oof) == 15 and len({r["path"] for r in oof}) == 15
    fold_of = {Path(r["path"]).relative_to(data).as_posix(): r["fold"] for r in oof}
    patients: dict[str, set[str]] = {}
    for line in groups.read_text(encoding="utf-8").splitlines()[1:]:
        file, patient = line.rsplit(",", 1)
        patients.setdefault(patient, set()).add(fold_of[file])
    assert all(len(folds) == 1 for folds in patients.values()), patients
    assert fold_of[f"{CLASSES[1]}/img 3 copy.png"] == fold_of[f"{CLASSES[1]}/img 3.png"]
    assert "grouped by" in (out / "cv.md").read_text(encoding="utf-8")


def test_a_groups_file_that_misses_files_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    data = make_folder(tmp_path / "d", per_class=7)
    groups = _write_groups(data, tmp_path / "groups.csv", skip=2)
    argv = ["cv", "--data", str(data), "--folds", "3", *TINY, "--groups", str(groups), "--project",
            str(tmp_path / "runs"), "-q"]  # fmt: skip
    assert main(argv) == 2
    assert "misses 2 of the 14 images" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
