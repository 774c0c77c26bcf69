"""The HTTP API through FastAPI's TestClient: every endpoint, every refusal, auth, CORS, limits and logs."""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from sedensenet.checkpoint import CheckpointError
from sedensenet.engine.predictor import Prediction, probabilities_to_rows
from sedensenet.serve import ServeSettings, create_app
from sedensenet.serve.batching import DynamicBatcher, QueueFull
from sedensenet.serve.run import is_loopback, threads_per_worker

from .conftest import CLASSES, DATA_NAME, EPOCH_METRICS, IMAGE_SIZE, TRAIN_CLASSES, png_bytes

CHECKPOINT = "weights/best.safetensors"


@pytest.fixture(scope="module")
def client(run_dir: Path) -> TestClient:
    with TestClient(create_app(run_dir, backend="eager")) as c:
        yield c


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (name, data, "application/octet-stream")) for name, data in items]


def assert_error(response, status: int, error: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    for word in words:
        assert word in body["detail"]
    return body


# --- health, page, documents ----------------------------------------------------------------------------------


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_before_the_lifespan_ran_the_server_is_alive_but_not_ready(run_dir: Path) -> None:
    c = TestClient(create_app(run_dir))  # not entered: the model is not loaded
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert_error(r, 503, "not_ready")
    assert r.headers["retry-after"] == "1"
    assert_error(c.get("/v1/model"), 503, "not_ready")


def test_page_and_assets_load_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    for name in ("app.js", "style.css", "favicon.svg"):
        asset = client.get(f"/assets/{name}")
        assert asset.status_code == 200, name
        text = asset.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, never fetched
        assert "http://" not in text and "https://" not in text, name
    assert "https://" not in page.text and "http://" not in page.text
    assert_error(client.get("/assets/..%2Fapp.py"), 404, "not_found")


def test_openapi_documents_the_api_and_the_online_docs_pages_are_off(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404


# --- the model card --------------------------------------------------------------------------------------------


def test_model_card(client: TestClient, run_dir: Path) -> None:
    """A checkpoint without a stored evaluation (as those written before it): the history row of its epoch, and
    nothing from the metrics.json beside it (the card comes from the file alone)."""
    card = client.get("/v1/model").json()
    weights = run_dir / CHECKPOINT
    assert card["id"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["checkpoint"] == "best.safetensors"
    assert card["classes"] == CLASSES
    assert card["preset"] == "se_densenet_tiny"
    assert (card["image_size"], card["in_chans"], card["se"]) == (IMAGE_SIZE, 3, True)
    from sedensenet import load_model

    assert card["parameters"] == sum(p.numel() for p in load_model(run_dir).parameters())
    assert card["data"] == {"name": "builtin:test", "train_images": 48, "val_images": 12, "test_images": None}
    assert (card["epoch"], card["epoch_metrics"], card["evaluation"]) == (2, EPOCH_METRICS, None)
    mtime = dt.datetime.fromtimestamp(weights.stat().st_mtime, dt.timezone.utc)
    assert card["trained_at"] == mtime.isoformat(timespec="seconds") and card["backend"] == "eager"
    assert card["limits"] == {"max_upload_mb": 20.0, "max_files": 64, "max_pixels": 40_000_000, "max_batch": 32}


def test_openapi_documents_the_model_card(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/v1/model"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ModelCard"}
    components = schema["components"]["schemas"]
    card = components["ModelCard"]
    assert set(card["required"]) >= {"id", "classes", "data", "evaluation", "limits"}
    assert "file system" in components["DataSummary"]["description"]
    split = components["SplitEvaluation"]["properties"]
    assert {"label", "images", "accuracy", "sensitivity", "ece"} <= set(split)
    assert set(components["Estimate"]["properties"]) == {"value", "interval"}
    for path in ("/v1/predict", "/v1/explain", "/healthz"):
        method = "get" if path == "/healthz" else "post"
        assert "$ref" in schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]


# --- the model card of a run with a test split ------------------------------------------------------------------


def card_of(checkpoint: Path) -> dict:
    with TestClient(create_app(checkpoint, backend="eager")) as c:
        return c.get("/v1/model").json()


@pytest.fixture(scope="module")
def evaluated_card(evaluated_run: Path) -> dict:
    return card_of(evaluated_run)


def test_card_shows_the_test_figures_first_with_label_intervals_decision_and_calibration(
    evaluated_card: dict, evaluated_run: Path
) -> None:
    test = json.loads((evaluated_run / "test" / "metrics.json").read_text(encoding="utf-8"))
    val = json.loads((evaluated_run / "metrics.json").read_text(encoding="utf-8"))
    evaluation = evaluated_card["evaluation"]
    assert [s["split"] for s in evaluation["splits"]] == ["test", "val"]
    shown_test, shown_val = evaluation["splits"]
    assert shown_test["label"] == test["label"] == "test (evaluated once, with what validation chose)"
    assert shown_val["label"] == val["label"] == "validation (used for selection)"
    positive, negative = TRAIN_CLASSES
    for shown, report in ((shown_test, test), (shown_val, val)):
        ci = report["intervals"]
        assert shown["images"] == report["num_samples"] == 12
        assert shown["accuracy"] == {"value": report["accuracy"], "interval": ci["accuracy"]}
        assert shown["balanced_accuracy"] == {"value": report["balanced_accuracy"], "interval": ci["balanced_accuracy"]}
        assert shown["roc_auc"] == {"value": report["roc_auc"], "interval": ci["roc_auc"]}
        assert shown["sensitivity"] == {"value": report["binary"]["sensitivity"], "interval": ci["recall"][positive]}
        assert shown["specificity"] == {"value": report["binary"]["specificity"], "interval": ci["recall"][negative]}
        assert shown["ppv"] == {"value": report["binary"]["ppv"], "interval": None}  # no bootstrap for PPV/NPV
        assert shown["npv"] == {"value": report["binary"]["npv"], "interval": None}
        calibration = report["calibration"]
        assert (shown["ece"], shown["ece_before"]) == (calibration["ece"], calibration["ece_before"])
        low, high = shown["accuracy"]["interval"]
        assert 0 <= low <= shown["accuracy"]["value"] <= high <= 1 and low < high
    assert (evaluation["positive"], evaluation["threshold"]) == (positive, test["threshold"])
    assert evaluation["temperature"] == test["calibration"]["temperature"] != 1.0
    how = (evaluation["rule"], evaluation["chosen_on"], evaluation["calibrate"])
    assert how == ("youden", "validation", "temperature")
    assert evaluation["inference"] == test["decision"]["inference"]
    assert (evaluation["confidence"], evaluation["resamples"]) == (0.95, ci["resamples"])
    assert evaluated_card["data"] == {"name": DATA_NAME, "train_images": 32, "val_images": 12, "test_images": 12}
    assert evaluated_card["trained_at"] == evaluation["evaluated_at"]


def strings(value: object) -> list[str]:
    """Every string in a JSON document, keys included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_a_copy_of_the_checkpoint_alone_serves_the_same_card_and_no_path(
    evaluated_card: dict, evaluated_run: Path, copied_checkpoint: Path
) -> None:
    assert not (copied_checkpoint.parent / "metrics.json").exists()
    assert card_of(copied_checkpoint) == evaluated_card
    text = json.dumps(evaluated_card, ensure_ascii=False)
    data = evaluated_run.parent.parent / DATA_NAME
    for path in (data, evaluated_run, copied_checkpoint.parent, Path(os.getcwd())):
        assert str(path) not in text
    leaks = [s for s in strings(evaluated_card) if os.path.isabs(s) or os.sep in s or s.startswith("~")]
    assert leaks == []
    assert DATA_NAME in text  # the data set's name (its folder's own name) is shown


# --- predict -----------------------------------------------------------------------------------------------------


def test_predict_many_files_in_order_with_top_k(client: TestClient, image_dir: Path) -> None:
    paths = sorted(image_dir.iterdir())
    r = client.post("/v1/predict?top_k=3", files=files(*((p.name, p.read_bytes()) for p in paths)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == client.get("/v1/model").json()["id"]
    assert [p["file"] for p in body["predictions"]] == [p.name for p in paths]
    for pred in body["predictions"]:
        probs = [t["probability"] for t in pred["top_k"]]
        assert sorted(t["class"] for t in pred["top_k"]) == sorted(CLASSES)
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert (pred["label"], pred["probability"]) == (pred["top_k"][0]["class"], probs[0])


def test_predict_raw_body_equals_multipart(client: TestClient) -> None:
    data = png_bytes(7)
    raw = client.post("/v1/predict?top_k=2", content=data, headers={"content-type": "image/png", "x-filename": "x.png"})
    form = client.post("/v1/predict?top_k=2", files=files(("x.png", data)))
    assert raw.status_code == 200 and raw.json() == form.json()


def test_predict_as_csv_has_predicts_columns(client: TestClient) -> None:
    a, b = png_bytes(8), png_bytes(9)
    json_body = client.post("/v1/predict?top_k=2", files=files(("a,1.png", a), ("图.png", b))).json()
    r = client.post("/v1/predict?top_k=2", files=files(("a,1.png", a), ("图.png", b)), headers={"accept": "text/csv"})
    assert r.headers["content-type"].startswith("text/csv")
    expected = probabilities_to_rows(
        [Prediction(p["file"], p["label"], p["probability"], [(t["class"], t["probability"]) for t in p["top_k"]])
         for p in json_body["predictions"]]
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["path", "label", "probability", "top_k", "error"]
    assert rows == [{k: str(v) for k, v in row.items()} for row in expected]


def test_single_label_answers_carry_no_multilabel_fields(client: TestClient) -> None:
    """The multi-label fields are left out for a single-label model: its JSON is what it was before them."""
    one = files(("a.png", png_bytes(12)))
    assert set(client.post("/v1/predict", files=one).json()["predictions"][0]) == {"file", "label", "probability",
                                                                                    "top_k"}  # fmt: skip
    explained = client.post("/v1/explain", files=one).json()
    assert set(explained) == {"model_id", "file", "label", "probability", "target", "overlay_png", "image_png",
                              "heatmap_png", "se_layer", "se_weights"}  # fmt: skip
    card = client.get("/v1/model").json()
    assert not {"task", "labels", "label_rule", "evaluation_note"} & set(card)


# --- explain -----------------------------------------------------------------------------------------------------


def test_explain_returns_overlay_heatmap_and_se_weights(client: TestClient, run_dir: Path) -> None:
    data = png_bytes(10, size=(60, 45))
    r = client.post("/v1/explain", files=files(("猫.png", data)))
    assert r.status_code == 200, r.text
    body = r.json()
    predicted = client.post("/v1/predict", files=files(("猫.png", data))).json()["predictions"][0]
    assert (body["label"], body["probability"]) == (predicted["label"], predicted["probability"])
    assert body["target"] == body["label"] and body["file"] == "猫.png"
    for key in ("overlay_png", "image_png", "heatmap_png"):
        with Image.open(io.BytesIO(base64.b64decode(body[key]))) as im:
            assert (im.format, im.size) == ("PNG", (60, 45)), key
    from sedensenet import load_model

    se = load_model(run_dir).se_modules()
    assert body["se_layer"] == list(se)[-1]
    assert len(body["se_weights"]) == se[body["se_layer"]].channels
    assert all(0 <= w <= 1 for w in body["se_weights"])


def test_explain_target_and_png(client: TestClient) -> None:
    data = png_bytes(11)
    r = client.post("/v1/explain?target=鸟", files=files(("a.png", data)))
    assert r.json()["target"] == "鸟"
    png = client.post("/v1/explain", files=files(("a.png", data)), headers={"accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert_error(client.post("/v1/explain?target=fish", files=files(("a.png", data))), 422, "invalid_parameter", "狗")
    assert_error(client.post("/v1/explain", files=files(("a.png", data), ("b.png", data))), 400, "one_image")


# --- refusals ----------------------------------------------------------------------------------------------------


def _png_with_size(width: int, height: int) -> bytes:
    data = png_bytes(0, size=(4, 4))
    chunk = struct.pack(">II", width, height) + data[24:29]
    ihdr = struct.pack(">I", 13) + b"IHDR" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + chunk))
    return data[:8] + ihdr + data[33:]


@pytest.mark.parametrize(
    ("name", "data", "status", "error", "words"),
    [
        ("notes.png", b"just some text\n", 415, "not_image", ["notes.png", "not an image"]),
        ("fake.jpg", b"%PDF-1.4\n" + bytes(200), 415, "not_image", ["fake.jpg"]),
        ("empty.png", b"", 422, "empty", ["empty.png", "0 bytes"]),
        ("cut.jpg", png_bytes(1, fmt="JPEG")[:300], 422, "corrupt", ["cut.jpg", "truncated"]),
        ("bomb.png", _png_with_size(60_000, 60_000), 422, "too_large", ["bomb.png", "3600000000 pixels"]),
    ],
)
def test_bad_images_are_refused_naming_the_file(client, name, data, status, error, words) -> None:
    body = assert_error(client.post("/v1/predict", files=files((name, data))), status, error, *words)
    assert body["file"] == name
    assert_error(client.post("/v1/explain", files=files((name, data))), status, error, name)


def test_one_bad_file_refuses_the_request_and_counts_the_others(client: TestClient) -> None:
    r = client.post("/v1/predict", files=files(("ok.png", png_bytes(1)), ("bad.png", b"x"), ("bad2.png", b"")))
    assert_error(r, 415, "not_image", "bad.png", "1 more files refused")


def test_pixel_limit_is_enforced(run_dir: Path) -> None:
    with TestClient(create_app(run_dir, backend="eager", max_pixels=1000)) as c:
        assert_error(c.post("/v1/predict", files=files(("a.png", png_bytes(0, size=(40, 30))))), 422, "too_large",
                     "1200 pixels > limit 1000")  # fmt: skip


def test_upload_limits(run_dir: Path) -> None:
    with TestClient(create_app(run_dir, backend="eager", max_upload_mb=0.01, max_files=2)) as c:
        big = bytes(20_000)
        assert_error(c.post("/v1/predict", content=big, headers={"content-type": "image/png"}), 413, "too_large",
                     "0.01 MB")  # fmt: skip

        def chunks():  # no Content-Length: chunked transfer, counted as it arrives
            for _ in range(100):
                yield bytes(1000)

        assert_error(c.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"}), 413, "too_large")
        small = png_bytes(0, size=(4, 4))
        three = files(("a.png", small), ("b.png", small), ("c.png", small))
        assert_error(c.post("/v1/predict", files=three), 413, "too_many_files", "more than 2 files")
        assert c.post("/v1/predict", files=three[:2]).status_code == 200


def test_malformed_requests(client: TestClient) -> None:
    mp = "multipart/form-data"
    assert_error(client.post("/v1/predict", content=b"abc", headers={"content-type": mp}), 400, "malformed_multipart")
    body = b"--xx\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\nunterminated"
    r = client.post("/v1/predict", content=body, headers={"content-type": f"{mp}; boundary=xx"})
    assert r.status_code == 400 and r.json()["error"] in ("malformed_multipart", "no_file")
    assert_error(client.post("/v1/predict", data={"name": "x"}, files=[]), 415, "unsupported_media_type")
    assert_error(client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type", "text/plain")  # fmt: skip
    assert_error(client.post("/v1/predict?top_k=0", content=png_bytes(1), headers={"content-type": "image/png"}),
                 422, "invalid_parameter", "top_k")  # fmt: skip
    assert_error(client.post("/v1/predict", content=b"x", headers={"content-length": "1x"}), 400, "bad_request")
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")


def test_a_full_queue_answers_503_with_retry_after(run_dir: Path) -> None:
    with TestClient(create_app(run_dir, backend="eager", max_batch=1, max_queue=1)) as c:
        small = png_bytes(0, size=(4, 4))
        r = c.post("/v1/predict", files=files(("a.png", small), ("b.png", small)))
        assert_error(r, 503, "busy", "limit 1")
        assert r.headers["retry-after"] == "1"


# --- security ----------------------------------------------------------------------------------------------------


def test_api_key(run_dir: Path) -> None:
    with TestClient(create_app(run_dir, backend="eager", api_key="s3cret-key")) as c:
        r = c.get("/v1/model")
        assert_error(r, 401, "unauthorized", "Bearer")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/v1/model", headers={"authorization": "Bearer wrong-key"}), 401, "unauthorized")
        assert_error(c.post("/v1/predict", content=png_bytes(1), headers={"content-type": "image/png"}), 401,
                     "unauthorized")  # fmt: skip
        assert c.get("/v1/model", headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.get("/").status_code == 200 and c.get("/healthz").status_code == 200


def test_cors_is_off_unless_an_origin_is_given(client: TestClient, run_dir: Path) -> None:
    origin = {"origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/v1/model", headers=origin).headers
    with TestClient(create_app(run_dir, backend="eager", cors_origins=("http://elsewhere.example",))) as c:
        assert c.get("/v1/model", headers=origin).headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_logs_never_name_uploaded_files(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name = "patient-张三-0042.png"
    client.post("/v1/predict", files=files((name, png_bytes(3))))
    client.post("/v1/predict", files=files((name, b"not an image")))
    client.post("/v1/explain", files=files((name, png_bytes(3))))
    assert caplog.records, "expected some log records to check"
    assert not [r for r in caplog.records if "张三" in r.getMessage() or "0042" in r.getMessage()]


def test_only_safetensors_checkpoints_are_served(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="safetensors"):
        create_app(tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match="not found"):
        create_app(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("max_batch", 0, "max_batch"), ("max_upload_mb", float("nan"), "max_upload_mb"), ("backend", "tpu", "tpu"),
     ("api_key", "short", "8 characters"), ("max_queue", 4, "max_queue")],
)  # fmt: skip
def test_bad_settings_are_refused_before_loading(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ServeSettings(**{field: value})


def test_cli_helpers() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert threads_per_worker(3, cores=16) == 5 and threads_per_worker(32, cores=16) == 1


# --- batching ----------------------------------------------------------------------------------------------------


def test_concurrent_images_share_forward_passes_and_close_drains_the_queue() -> None:
    sizes: list[int] = []

    def run(batch: torch.Tensor) -> np.ndarray:
        sizes.append(batch.shape[0])
        return batch.flatten(1).sum(1, keepdim=True).numpy()

    async def main() -> list[float]:
        batcher = DynamicBatcher(run, max_batch=4, max_wait_ms=50, max_queue=16)
        batcher.start()
        arrivals = [batcher.arriving().__enter__() for _ in range(10)]
        tasks = [asyncio.create_task(batcher.submit([torch.full((1, 2, 2), float(i))], arrivals[i])) for i in range(10)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit([torch.zeros(1, 2, 2)] * 16)
        await batcher.close()  # every queued image still gets its answer
        return [float(r[0][0]) for r in await asyncio.gather(*tasks)]

    results = asyncio.run(main())
    assert results == [4.0 * i for i in range(10)]
    assert sizes == [4, 4, 2]


def test_a_lone_request_does_not_wait_for_a_batch_to_fill() -> None:
    async def main() -> float:
        batcher = DynamicBatcher(lambda b: b.flatten(1).numpy(), max_batch=32, max_wait_ms=2000, max_queue=64)
        batcher.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit([torch.zeros(1, 1, 1)])
        elapsed = loop.time() - start
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 1.0


@pytest.mark.parametrize(
    ("data", "name"),
    [("/home/me/xray/", "xray"), ("C:\\data\\xray", "xray"), ("builtin:digits", "builtin:digits"),
     ("/data/skin/labels.csv", "skin/labels.csv"), ("labels.csv", "labels.csv"), ("./", None)],
)  # fmt: skip
def test_the_card_names_the_data_without_its_path(data: str, name: str | None) -> None:
    from sedensenet.serve.model import data_name

    assert data_name(data) == name
