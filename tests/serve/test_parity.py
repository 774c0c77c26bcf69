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
