"""The server's answers are ``sedensenet predict``'s for the same files, with the same backend on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import sedensenet
from sedensenet.cli import main
from sedensenet.serve import create_app


@pytest.mark.parametrize("backend", ["eager", "reference", "onnxruntime"])
def test_against_predict(backend: str, run_dir: Path, image_dir: Path, tmp_path: Path) -> None:
    paths = sorted(image_dir.iterdir())
    with TestClient(create_app(run_dir, backend=backend, device="cpu")) as c:
        assert c.get("/v1/model").json()["backend"] == backend
        body = c.post(
            "/v1/predict?top_k=3",
            files=[("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths],
        ).json()
    served = {p["file"]: {t["class"]: t["probability"] for t in p["top_k"]} for p in body["predictions"]}

    offline = sedensenet.predict(run_dir, [str(p) for p in paths], top_k=3, device="cpu", backend=backend)
    assert len(offline) == len(paths) and not any(p.error for p in offline)
    for pred in offline:
        mine = served[Path(pred.path).name]
        assert [c for c, _ in pred.top_k] == list(mine)  # same order of classes
        for cls, prob in pred.top_k:
            assert mine[cls] == pytest.approx(prob, abs=1e-5)

    out = tmp_path / "predictions.json"
    assert main(["predict", str(run_dir), str(image_dir), "--top-k", "3", "--backend", backend,
                 "--device", "cpu", "--output", str(out), "-q"]) == 0  # fmt: skip
    for row in json.loads(out.read_text(encoding="utf-8")):
        mine = served[Path(row["path"]).name]
        assert row["label"] == next(iter(mine))
        assert row["probability"] == pytest.approx(mine[row["label"]], abs=1e-5)


def test_a_stored_temperature_and_threshold_decide_as_in_predict(image_dir: Path, tmp_path: Path) -> None:
    # The server must make the decision that was evaluated: the checkpoint's temperature and threshold, applied by
    # the same function predict uses, not an argmax of its own.
    import numpy as np
    import torch

    from sedensenet.checkpoint import CheckpointMeta, save_checkpoint
    from sedensenet.models import create_model

    torch.manual_seed(1)
    model, classes = create_model("se_densenet_tiny", num_classes=2), ["阴性", "阳性"]
    paths = sorted(image_dir.iterdir())
    plain = tmp_path / "plain.safetensors"
    save_checkpoint(plain, model, CheckpointMeta(model=model.config.to_dict(), classes=classes, image_size=32))
    p_pos = np.array([dict(p.top_k)[classes[1]] for p in sedensenet.predict(plain, paths, top_k=2, device="cpu")])
    cut = float(np.median(p_pos**2 / (p_pos**2 + (1 - p_pos) ** 2)))  # the median P(pos) at temperature 0.5
    decided = tmp_path / "decided.safetensors"
    meta = CheckpointMeta(model=model.config.to_dict(), classes=classes, image_size=32, temperature=0.5,
                          threshold=cut, positive=classes[1])  # fmt: skip
    save_checkpoint(decided, model, meta)

    offline = sedensenet.predict(decided, paths, top_k=2, device="cpu", backend="eager")
    with TestClient(create_app(decided, backend="eager", device="cpu")) as c:
        body = c.post(
            "/v1/predict?top_k=2", files=[("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
        ).json()
    served = {p["file"]: p for p in body["predictions"]}
    for pred in offline:
        mine = served[Path(pred.path).name]
        assert mine["label"] == pred.label
        assert mine["probability"] == pytest.approx(pred.probability, abs=1e-5)
    labels = [p.label for p in offline]
    assert labels.count(classes[1]) == 3  # the threshold at the median split the five files 3 / 2
