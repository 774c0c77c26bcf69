"""A multi-label checkpoint served through FastAPI's TestClient: each label's probability, threshold and decision
(the predictor's, decided by ``decide_labels``), the card's labels, and Grad-CAM of a chosen label."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from sedensenet import load_model
from sedensenet.checkpoint import CheckpointMeta, LabelDecision
from sedensenet.config import InferenceSettings
from sedensenet.data import decode_image
from sedensenet.engine.decision import decide_labels, postprocess
from sedensenet.engine.predictor import Predictor
from sedensenet.explain import explain_image, heatmap_colors
from sedensenet.serve import create_app
from sedensenet.serve.model import label_card

from .conftest import LABEL_TEMPERATURES, LABELS, PICTURE_PRESENT, picture_bytes, png_bytes

IMAGES = {"胸片.png": picture_bytes(), "noise.png": png_bytes(21), "wide.png": png_bytes(22, size=(70, 30))}


@pytest.fixture(scope="module")
def client(multilabel_checkpoint: Path) -> TestClient:
    with TestClient(create_app(multilabel_checkpoint, backend="eager", device="cpu")) as c:
        yield c


def upload(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (name, IMAGES[name], "image/png")) for name in names]


def expected_probabilities(checkpoint: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray, Predictor]:
    """What the server must say: the predictor's (post-processed) sigmoid outputs and the decisions of
    ``decide_labels``; they are checked against the sigmoid of the model's logits, computed here."""
    predictor = Predictor.load(checkpoint, InferenceSettings(backend="reference", device="cpu"))
    x = torch.stack([predictor.preprocess(decode_image(IMAGES[n])) for n in names])  # (N, C, S, S)
    probs = postprocess(predictor.probabilities(x), predictor.meta)
    with torch.no_grad():
        logits = load_model(checkpoint)(x)  # (N, K)
    temps = torch.tensor([t or 1.0 for t in LABEL_TEMPERATURES])
    np.testing.assert_allclose(probs, torch.sigmoid(logits / temps).numpy(), atol=1e-6)
    return probs, decide_labels(probs, predictor.meta), predictor


def test_predict_gives_each_labels_probability_threshold_and_decision(
    client: TestClient, multilabel_checkpoint: Path
) -> None:
    names = list(IMAGES)
    r = client.post("/v1/predict?top_k=2", files=upload(*names))
    assert r.status_code == 200, r.text
    probs, present, predictor = expected_probabilities(multilabel_checkpoint, names)
    thresholds = [d.threshold for d in predictor.meta.labels]
    assert present[0].tolist() == PICTURE_PRESENT  # the picture shows both decisions
    for pred, p, decided in zip(r.json()["predictions"], probs, present, strict=True):
        assert [s["label"] for s in pred["scores"]] == LABELS
        assert [s["probability"] for s in pred["scores"]] == pytest.approx(p.tolist(), abs=1e-5)
        assert [s["threshold"] for s in pred["scores"]] == thresholds
        assert [s["present"] for s in pred["scores"]] == decided.tolist()
        order = [i for i in np.argsort(-p) if decided[i]]  # the decided set, most probable first
        assert pred["labels"] == [LABELS[i] for i in order]
        assert pred["label"] == "|".join(pred["labels"])
        assert pred["probability"] == (pytest.approx(p[order[0]], abs=1e-5) if order else None)
        assert [t["class"] for t in pred["top_k"]] == [LABELS[i] for i in np.argsort(-p)[:2]]


def test_predict_as_csv_has_one_column_per_label(client: TestClient) -> None:
    names = ["胸片.png", "noise.png"]
    body = client.post("/v1/predict", files=upload(*names)).json()["predictions"]
    r = client.post("/v1/predict", files=upload(*names), headers={"accept": "text/csv"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["path", "labels", *LABELS, "error"]
    for row, pred in zip(rows, body, strict=True):
        assert (row["path"], row["labels"], row["error"]) == (pred["file"], "|".join(pred["labels"]), "")
        assert [float(row[n]) for n in LABELS] == pytest.approx([s["probability"] for s in pred["scores"]], abs=1e-6)


def test_card_says_multi_and_lists_thresholds_without_a_stored_evaluation(
    client: TestClient, multilabel_checkpoint: Path
) -> None:
    card = client.get("/v1/model").json()
    meta = Predictor.load(multilabel_checkpoint, InferenceSettings(device="cpu")).meta
    assert (card["task"], card["classes"]) == ("multi", LABELS)
    assert card["labels"] == [{"name": d.name, "threshold": d.threshold, "temperature": t}
                              for d, t in zip(meta.labels, LABEL_TEMPERATURES, strict=True)]  # fmt: skip
    assert len({d.threshold for d in meta.labels}) == len(LABELS)  # each label its own
    assert card["label_rule"] == {"threshold": "f1", "calibrate": "none", "chosen_on": "validation"}
    assert card["evaluation"] is None and "no final evaluation is stored" in card["evaluation_note"]
    assert card["epoch_metrics"] == {"val_loss": 0.7, "val_auc": 0.81, "val_mAP": 0.64}


def test_card_lists_temperatures_where_set_and_the_default_threshold_where_none_is_stored() -> None:
    meta = CheckpointMeta(model={}, classes=["a", "b"], task="multi", labels=[LabelDecision("a", 0.3, 1.7),
                          LabelDecision("b", 0.6)], decision={"threshold": "0.6"})  # fmt: skip
    fields = label_card(meta)
    assert [t.model_dump() for t in fields["labels"]] == [
        {"name": "a", "threshold": 0.3, "temperature": 1.7}, {"name": "b", "threshold": 0.6, "temperature": None}
    ]  # fmt: skip
    assert fields["label_rule"].model_dump() == {"threshold": "0.6", "calibrate": None, "chosen_on": None}
    meta.labels = None  # not chosen yet: decide_labels decides at 0.5, and so says the card
    assert [(t.name, t.threshold) for t in label_card(meta)["labels"]] == [("a", 0.5), ("b", 0.5)]
    assert label_card(CheckpointMeta(model={}, classes=["a", "b"])) == {}  # single-label: the card as it was


def test_explain_a_chosen_label_is_the_grad_cam_of_its_logit(client: TestClient, multilabel_checkpoint: Path) -> None:
    name, target = "胸片.png", LABELS[2]
    r = client.post(f"/v1/explain?target={target}", files=upload(name))
    assert r.status_code == 200, r.text
    body = r.json()
    predicted = client.post("/v1/predict", files=upload(name)).json()["predictions"][0]
    assert (body["target"], body["labels"], body["label"]) == (target, predicted["labels"], predicted["label"])
    assert body["target_score"] == predicted["scores"][2]
    model = load_model(multilabel_checkpoint)
    image = decode_image(IMAGES[name])
    x = Predictor(model, model.meta, InferenceSettings(device="cpu")).preprocess(image)
    cam = explain_image(model, x, 2).cam
    expected = heatmap_colors(cam, (image.height, image.width)) * 255  # (H, W, 3)
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))) as shown:
        assert shown.size == image.size
        assert np.abs(np.asarray(shown, dtype=np.float32) - expected).max() <= 1.0
    other = client.post(f"/v1/explain?target={LABELS[1]}", files=upload(name)).json()
    assert other["target"] == LABELS[1] and other["heatmap_png"] != body["heatmap_png"]


def test_explain_an_unknown_label_is_refused_naming_the_labels(client: TestClient) -> None:
    r = client.post("/v1/explain?target=fracture", files=upload("noise.png"))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_parameter"
    assert "'fracture'" in body["detail"] and all(label in body["detail"] for label in LABELS)
