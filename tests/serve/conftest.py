"""A tiny SE-DenseNet in a run folder (weights + metrics.json), a real run with a test split (and its best
checkpoint copied out alone), a tiny multi-label checkpoint, images to send, and a live server."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import sedensenet
from sedensenet.checkpoint import CheckpointMeta, LabelDecision, save_checkpoint
from sedensenet.config import InferenceSettings
from sedensenet.data import decode_image
from sedensenet.engine.decision import postprocess
from sedensenet.engine.predictor import Predictor
from sedensenet.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES as TRAIN_CLASSES  # noqa: E402
from imagegen import make_folder  # noqa: E402

CLASSES = ["狗", "猫", "鸟"]  # dog, cat, bird
IMAGE_SIZE = 32
EPOCH_METRICS = {"loss": 1.1, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.75}
DATA_NAME = "chest x-ray 胸片"
"""The evaluated run's data folder: the card may show this name, never the path it sits under."""


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/训练 (a Chinese run name) with weights/best.safetensors of a fresh se_densenet_tiny (no stored
    evaluation, as checkpoints written before it) and a metrics.json."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("serve") / "训练"
    model = create_model("se_densenet_tiny", num_classes=len(CLASSES))
    meta = CheckpointMeta(
        model=model.config.to_dict(), classes=CLASSES, image_size=IMAGE_SIZE, epoch=2, metrics=EPOCH_METRICS,
        extra={"data": "builtin:test", "train_images": 48, "val_images": 12},
    )  # fmt: skip
    save_checkpoint(run / "weights" / "best.safetensors", model, meta)
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.99, "split": "val", "per_class": []}), encoding="utf-8")
    return run


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-epoch run on two classes with train/val/test folders, its threshold (Youden) and temperature
    chosen on validation: weights/best.safetensors carries the final evaluation. One image of each class is
    mislabelled in val and test, so the figures (10 of 12 right) have intervals of some width."""
    root = tmp_path_factory.mktemp("evaluated")
    data = root / DATA_NAME
    for split, seed, per_class in (("train", 0, 16), ("val", 1, 6), ("test", 2, 6)):
        make_folder(data / split, per_class=per_class, seed=seed, size=16)
        if split != "train":
            folders = [data / split / name for name in TRAIN_CLASSES]
            for i, (a, b) in enumerate(((0, 1), (1, 0))):
                shutil.move(folders[a] / "img 0.png", folders[b] / f"mislabelled {i}.png")
    result = sedensenet.train(
        str(data), project=str(root / "runs"), epochs=1, lr=0.01, verbose=0, model="se_densenet_tiny", image_size=16,
        batch_size=8, workers=0, threshold="youden", calibrate="temperature", positive=TRAIN_CLASSES[0],
    )  # fmt: skip
    return result.run_dir


@pytest.fixture(scope="session")
def copied_checkpoint(evaluated_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluated run's best.safetensors alone in another folder: no run folder, no metrics.json beside it."""
    folder = tmp_path_factory.mktemp("elsewhere")
    return Path(shutil.copy(evaluated_run / "weights" / "best.safetensors", folder / "best.safetensors"))


LABELS = ["积液 effusion", "mass", "nodule", "气胸"]
LABEL_TEMPERATURES = [1.5, None, 0.7, 2.0]
"""Per-label temperatures of the multi-label checkpoint: what serve shows is calibrated, one label left as it is."""
"""The multi-label checkpoint's labels (effusion, mass, nodule, pneumothorax)."""
PICTURE_PRESENT = [True, False, True, False]
"""How the multi-label checkpoint decides :func:`picture_bytes`: its thresholds sit 0.02 below (present) or above
(absent) that picture's probabilities, so its chips and bars show both decisions."""


@pytest.fixture(scope="session")
def multilabel_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh se_densenet_tiny with four sigmoid outputs saved as a multi-label checkpoint, with a threshold per
    label and no stored evaluation (as a multi-label run writes it today)."""
    torch.manual_seed(3)
    model = create_model("se_densenet_tiny", num_classes=len(LABELS))
    meta = CheckpointMeta(
        model=model.config.to_dict(), classes=LABELS, image_size=IMAGE_SIZE, epoch=4, task="multi",
        labels=[LabelDecision(name, 0.5, t) for name, t in zip(LABELS, LABEL_TEMPERATURES, strict=True)],
        metrics={"val_loss": 0.7, "val_auc": 0.81, "val_mAP": 0.64}, extra={"data": "builtin:digit-pairs"},
        decision={"threshold": "f1", "calibrate": "none", "chosen_on": "validation", "inference": "eager"},
    )  # fmt: skip
    predictor = Predictor(model, meta, InferenceSettings(backend="reference", device="cpu"))
    x = predictor.preprocess(decode_image(picture_bytes()))[None]  # (1, C, S, S)
    probs = postprocess(predictor.probabilities(x), meta)[0]
    for decision, p, present in zip(meta.labels, probs, PICTURE_PRESENT, strict=True):
        decision.threshold = float(p - 0.02 if present else p + 0.02)
    path = tmp_path_factory.mktemp("multilabel") / "best.safetensors"
    save_checkpoint(path, model, meta)
    return path


def png_bytes(seed: int = 0, size: tuple[int, int] = (40, 52), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def picture_bytes() -> bytes:
    """A small picture (a bright disc on a gradient) rather than noise, so the page's screenshot reads well."""
    from PIL import ImageDraw

    x = np.linspace(0, 1, 160, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, 120, dtype=np.float32)[:, None, None]
    arr = (np.concatenate([40 + 120 * x + 0 * y, 60 + 100 * y + 0 * x, 140 - 60 * x + 0 * y], 2)).astype(np.uint8)
    image = Image.fromarray(arr)
    ImageDraw.Draw(image).ellipse((88, 30, 140, 82), fill=(250, 220, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five images in the formats and modes users send, Chinese names included."""
    d = tmp_path_factory.mktemp("images")
    files = {
        "猫 1.png": picture_bytes(),
        "狗.jpg": png_bytes(2, fmt="JPEG"),
        "gray.bmp": png_bytes(3, mode="L", fmt="BMP"),
        "cmyk.tif": png_bytes(4, mode="CMYK", fmt="TIFF"),
        "big.webp": png_bytes(5, size=(300, 200), fmt="WEBP"),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, *args: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """``sedensenet serve`` in a child process; returns it and its base URL once /readyz answers 200."""
    port = port or free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "sedensenet", "serve", str(checkpoint), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server was not ready after 120 s:\n{proc.stdout.read()}")


@pytest.fixture(scope="module")
def live_server(copied_checkpoint: Path) -> Iterator[str]:
    """``sedensenet serve`` of the evaluated run's best.safetensors copied alone into another folder."""
    proc, url = start_server(copied_checkpoint, "--backend", "eager")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
