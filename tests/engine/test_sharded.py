"""Sharded bulk prediction under torchrun (2 CPU processes, gloo): the merged CSV equals one process's, and a job
killed midway and resumed ends with every row once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sedensenet import inference
from sedensenet.checkpoint import CheckpointMeta, save_checkpoint
from sedensenet.cli import main
from sedensenet.config import InferenceSettings
from sedensenet.engine import distributed, sharded
from sedensenet.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402

WORKER = Path(__file__).with_name("shard_kill_worker.py")


def _torchrun(args: list[str], cwd: Path, script: Path | None = None) -> subprocess.CompletedProcess:
    target = [str(script)] if script else ["-m", "sedensenet"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint, an archive of 2 x 9 images plus one unreadable file, and one process's predictions."""
    tmp = tmp_path_factory.mktemp("shard")
    data = make_folder(tmp / "档案", per_class=9, size=16)
    (data / CLASSES[0] / "broken.png").write_bytes(b"not an image")
    torch.manual_seed(0)
    model = create_model("se_densenet_tiny", num_classes=2)
    meta = CheckpointMeta(model=model.config.to_dict(), classes=list(CLASSES), image_size=16)
    ckpt = save_checkpoint(tmp / "model.safetensors", model, meta)
    single = tmp / "single.csv"
    assert main(["predict", str(ckpt), str(data), "--backend", "eager", "--top-k", "2", "--output", str(single)]) == 0
    return {"tmp": tmp, "data": data, "ckpt": ckpt, "single": single}


def _args(job: dict[str, Path], output: Path, *extra: str) -> list[str]:
    return ["predict", str(job["ckpt"]), str(job["data"]), "--backend", "eager", "--top-k", "2",
            "--output", str(output), *extra]  # fmt: skip


def test_two_processes_merge_to_the_single_process_csv(job: dict[str, Path]) -> None:
    out = job["tmp"] / "two.csv"
    proc = _torchrun(_args(job, out), job["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "19 predictions written" in proc.stdout and "2 processes, backend eager" in proc.stdout
    assert out.read_text(encoding="utf-8") == job["single"].read_text(encoding="utf-8")
    assert "broken.png" in out.read_text(encoding="utf-8")  # the unreadable file keeps its row and its error
    assert not sharded.parts_dir(out).exists()


@pytest.mark.slow
def test_a_killed_rank_is_resumed_without_duplicate_or_missing_rows(job: dict[str, Path]) -> None:
    out = job["tmp"] / "resumed.csv"
    killed = _torchrun(_args(job, out), job["tmp"], script=WORKER)
    assert killed.returncode != 0
    parts = sharded.parts_dir(out)
    assert sorted(p.name for p in parts.iterdir()) == ["job.json", "part-00000-of-00002.csv"]
    assert not out.exists()

    proc = _torchrun(_args(job, out, "--resume"), job["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 of 2 parts were already written" in proc.stdout
    assert "part-00000-of-00002.csv already written (9 rows), skipped" in proc.stderr
    text = out.read_text(encoding="utf-8")
    assert text == job["single"].read_text(encoding="utf-8")
    paths = [line.split(",")[0] for line in text.splitlines()[1:]]
    assert len(paths) == len(set(paths)) == 19
    assert not parts.exists()  # merged, then the parts were removed


def test_resume_refuses_parts_of_another_job(job: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = job["tmp"] / "other.csv"
    parts = sharded.parts_dir(out)
    parts.mkdir()
    (parts / "job.json").write_text(json.dumps({"model": "x", "top_k": 5, "world_size": 2}))
    assert main(_args(job, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "belong to another job" in err and "top_k" in err and "world_size" in err
    assert main(_args(job, out)) == 0  # without --resume the old parts are cleared and the job runs
    assert out.read_text(encoding="utf-8") == job["single"].read_text(encoding="utf-8")


def test_every_rank_runs_the_backend_chosen_for_the_whole_job(
    job: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 19 files, threshold 15: the job is "big" (ONNX Runtime), rank 1's share of 10 alone would not be.
    monkeypatch.setattr(inference, "ONNX_MIN_IMAGES", 15)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    seen = []
    monkeypatch.setattr(sharded, "_predict", lambda model, files, k, settings: seen.append(
        (len(files), settings.backend)) or "path,label,probability,top_k,error\n")  # fmt: skip
    out = job["tmp"] / "pinned.csv"
    assert sharded.predict_sharded(job["ckpt"], job["data"], out, settings=InferenceSettings(backend="auto")) is None
    assert seen == [(10, "onnxruntime")]


def test_sharded_output_must_be_csv(job: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(job["ckpt"]), str(job["data"]), "--resume"]) == 2
    assert "give --output FILE.csv" in capsys.readouterr().err
    assert main(["predict", str(job["ckpt"]), str(job["data"]), "--resume", "--output", "x.json"]) == 2
    assert "--output must end in .csv" in capsys.readouterr().err
