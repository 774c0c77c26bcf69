"""The public Python API: ``train``, ``evaluate``, ``predict``, ``load_model``.

Each function returns plain values and logs through ``logging``; the CLI is a thin shell over them.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sedensenet import checkpoint as ckpt
from sedensenet.checkpoint import resolve_checkpoint
from sedensenet.config import ConfigError, TrainConfig, resolve_config
from sedensenet.display import Table
from sedensenet.engine.predictor import Prediction, Predictions, probabilities_to_rows

__all__ = ["DataCheckResult", "Prediction", "Predictions", "TrainResult", "check_data", "evaluate", "load_model",
           "predict", "predict_sharded", "probabilities_to_rows", "resolve_checkpoint", "train",
           "training_config"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: the Keras-like history, the run folder and the final metrics."""

    history: Any
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    best_epoch: int = 0
    memory_plan: dict[str, Any] = field(default_factory=dict)
    """The path the run trained on and why (``--memory-efficient``), as config.yaml records it."""

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "weights" / "best.safetensors"

    def plot(self, title: str | None = None) -> Any:
        """The tutorial's 12x4 figure (accuracy and loss, training vs validation) as a Figure that shows inline."""
        from sedensenet.reports.plots import plot_history

        return plot_history(self, title=title)

    def summary(self) -> Table:
        """A table of the epochs (best marked) and the run's files; prints as text, renders as HTML in Jupyter."""
        from sedensenet.columns import METRICS

        h, best = self.history.history, self.best_epoch
        rows = [
            [e, *(h[c.name][i] for c in METRICS), f"{h['lr'][i]:.2e}", f"{self.history.seconds[i]:.1f}",
             "*" if e == best else ""]
            for i, e in enumerate(self.history.epoch)
        ]  # fmt: skip
        header = ["epoch", *(c.name for c in METRICS), "lr", "seconds", "best"]
        notes = [f"Run folder: {self.run_dir}", f"Best checkpoint: {self.best_checkpoint} (epoch {best})"]
        notes += [f"{split}, best weights: {_scores(m)}" for split, m in self.metrics.items() if isinstance(m, dict)]
        return Table(header, rows, title=f"Training run {self.run_dir.name}: {len(rows)} epochs", notes=notes)

    def __repr__(self) -> str:
        h, best = self.history.history, self.best_epoch
        at = f"best epoch {best}"
        if best in self.history.epoch and h["val_accuracy"]:
            at += f", val_accuracy {h['val_accuracy'][self.history.epoch.index(best)]:.4f}"
        return f"TrainResult({len(self.history.epoch)} epochs, {at}, run folder {str(self.run_dir)!r})"


def _scores(metrics: dict[str, Any]) -> str:
    keys = ("accuracy", "balanced_accuracy", "roc_auc", "loss")
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), float))


def training_config(
    data: str | None = None, config: str | os.PathLike | None = None, **overrides: Any
) -> tuple[TrainConfig, dict[str, Any]]:
    """Resolve the settings of a run: defaults < built-in data set's recommendation < YAML file < ``overrides``.

    Returns the config and the recommendations that were applied (to show the user).
    """
    from sedensenet.config import load_yaml
    from sedensenet.data import BUILTIN, is_builtin

    if data is not None:
        overrides["data"] = data
    spec = overrides.get("data") or (load_yaml(config).get("data") if config else None)
    if not spec:
        raise ConfigError("no data given: pass a folder of images (one sub-folder per class) or builtin:digits")
    recommended: dict[str, Any] = {}
    if is_builtin(str(spec)):
        name = str(spec).split(":", 1)[1]
        file_keys = set(load_yaml(config)) if config else set()
        recommended = {k: v for k, v in BUILTIN[name].items() if k not in overrides and k not in file_keys}
        if overrides.get("time") or (config and load_yaml(config).get("time")):
            recommended.pop("epochs", None)  # a time budget plans the epochs (resolve_config: no cap unless given)
    return resolve_config(overrides, config_file=config, recommended=recommended), recommended


def train(
    data: str | None = None,
    *,
    config: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    verbose: int = 1,
    progress: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Train a DenseNet / SE-DenseNet on a folder of images and write a run folder.

    Args:
        data: image folder or ``builtin:digits`` / ``builtin:faces``.
        config: a YAML file of settings (e.g. a run folder's ``config.yaml``).
        resume: a run folder to continue from its last completed epoch.
        verbose: as Keras' ``fit``: 0 silent, 1 a live progress bar per epoch (a widget in Jupyter, text on a
            terminal) and one line per epoch on stdout (``loss: … - accuracy: … - val_loss: … - val_accuracy: …``),
            2 the lines alone (for log files).
        progress: show the progress bar whatever ``verbose`` says (on a terminal; the CLI's mode).
        **overrides: any :class:`~sedensenet.config.TrainConfig` field, e.g. ``epochs=10, model="se_densenet121"``.

    Returns:
        :class:`TrainResult`; ``result.history.history["val_accuracy"]`` as with Keras.

    Raises:
        TrainingInterrupted: on Ctrl-C (SIGINT) or SIGTERM, after the current step; the run folder keeps the
            last complete epoch and ``exc.command`` continues the run. A second signal aborts at once.
    """
    from sedensenet.engine.progress import TrainProgress
    from sedensenet.engine.run import train_run

    reporter = TrainProgress(verbose, bar=progress)  # checks verbose before any work
    cfg, recommended = None, {}
    if not resume:
        cfg, recommended = training_config(data, config, **overrides)
        _check_image_size(cfg)
    run = train_run(cfg, resume=resume or None, overrides=overrides, recommended=recommended, progress=reporter)
    return TrainResult(run.history, run.run_dir, run.metrics, run.best_epoch, run.memory_plan)


def _check_image_size(cfg: TrainConfig) -> None:
    """Refuse an image size the model's downsampling cannot take, before any file is read."""
    from sedensenet.models.registry import get_preset, model_config

    smallest = model_config(cfg.model).min_input_size()
    if cfg.image_size < smallest:
        usual = get_preset(cfg.model).default_image_size
        raise ConfigError(
            f"--image-size {cfg.image_size} is too small for {cfg.model}: its downsampling needs at least "
            f"{smallest}x{smallest} pixels (it is made for {usual}); use --image-size {max(smallest, min(usual, 64))} "
            f"or more, or a model for small images (se_densenet_bc_100 takes 32x32)"
        )


def load_model(path: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    """Load a checkpoint (or a run folder's best one) as an eval-mode model carrying ``.classes`` and ``.meta``."""
    model, _ = ckpt.load_checkpoint(resolve_checkpoint(path), map_location=device)
    return model


def predict(
    model: str | os.PathLike | torch.nn.Module,
    inputs: list[str | os.PathLike] | str | os.PathLike,
    top_k: int = 1,
    batch_size: int = 32,
    device: str = "auto",
    backend: str = "auto",
    tta: str = "none",
    amp: str = "auto",
) -> Predictions:
    """Classify image files (folders are searched recursively); unreadable files get an error entry.

    The label is the checkpoint's decision: its temperature applied, then its threshold (two classes) or the argmax;
    ``probability`` and ``top_k`` are the calibrated probabilities.

    ``backend``: how batches run (``auto``, ``onnxruntime``, ``eager``, ``compile`` or ``reference``, the
    unoptimised modules); see :data:`sedensenet.inference.BACKENDS`. ``tta``: test-time augmentation, the mean
    probabilities of a few views of each image (``flip``, ``vflip``, ``scale``, ``flip+scale``; see
    :data:`sedensenet.config.TTA_MODES`: horizontal flips swap left and right). ``amp``: ``auto`` (bf16 autocast on
    CPUs with bf16 matrix units and on GPUs, else float32), ``off`` (float32), ``bf16`` or ``fp16``.
    """
    from sedensenet.engine.predictor import Predictor

    predictor = Predictor.load(model, device=device, backend=backend, tta=tta, amp=amp)
    return Predictions(predictor.predict_files(inputs, top_k=top_k, batch_size=batch_size))


def predict_sharded(
    model: str | os.PathLike,
    inputs: list[str | os.PathLike] | str | os.PathLike,
    output: str | os.PathLike,
    *,
    top_k: int = 1,
    batch_size: int = 32,
    device: str = "auto",
    backend: str = "auto",
    resume: bool = False,
    tta: str = "none",
    amp: str = "auto",
) -> Any:
    """Bulk prediction in every process torchrun started (or in this one alone): each predicts a share of the
    sorted file list, rank 0 merges one CSV in input order; ``resume`` keeps the parts a killed job wrote.

    Returns rank 0's :class:`~sedensenet.engine.sharded.ShardedResult`, ``None`` on the other ranks. See
    :mod:`sedensenet.engine.sharded`.
    """
    import datetime

    from sedensenet.engine import distributed as dist
    from sedensenet.engine.device import select_device
    from sedensenet.engine.sharded import predict_sharded as run_shard

    # Ranks wait for the slowest share before the merge: a day, not the 30 minutes a training step may take.
    torchrun = dist.launched_by_torchrun()
    dev = dist.init(device, timeout=datetime.timedelta(hours=24)) if torchrun else select_device(device)
    if not dist.is_main():
        logging.getLogger("sedensenet").setLevel(logging.WARNING)  # one voice: rank 0 reports
    try:
        return run_shard(model, inputs, output, top_k=top_k, batch_size=batch_size, device=str(dev),
                         backend=backend, resume=resume, tta=tta, amp=amp)  # fmt: skip
    finally:
        dist.shutdown(clean=sys.exc_info()[0] is None)


def evaluate(
    model: str | os.PathLike | torch.nn.Module,
    data: str | os.PathLike,
    split: str = "auto",
    output: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str = "auto",
    backend: str = "auto",
    tta: str = "none",
    dedupe: str = "off",
    positive: str | None = None,
    amp: str = "auto",
) -> Any:
    """Evaluate a checkpoint on a labelled folder and write the reports to ``output``.

    ``split``: ``auto`` (``test/`` if present, else ``val/``, else every image of a class-per-folder tree),
    or ``train``, ``val``, ``test``, ``all``. Classes are matched by name with the checkpoint's. ``backend``,
    ``tta`` and ``amp`` as for :func:`predict` (metrics.json records them and the precision used). The checkpoint's
    temperature and threshold decide, as in :func:`predict`; ``positive`` names the class that sensitivity, PPV and
    the curves are about (two classes; default: the stored one). ``dedupe`` (``exact`` or ``near``) leaves out
    val/test images that duplicate training images.
    """
    from sedensenet.engine.predictor import Predictor

    predictor = Predictor.load(model, device=device, backend=backend, tta=tta, amp=amp)
    return predictor.evaluate_folder(
        data, split=split, output=output, batch_size=batch_size, dedupe=dedupe, positive=positive
    )


@dataclass
class DataCheckResult:
    """What :func:`check_data` returns: the findings and the report files written."""

    check: Any
    output: Path
    files: dict[str, Path]


def check_data(
    data: str | os.PathLike,
    output: str | os.PathLike | None = None,
    near_distance: int | None = None,
    project: str | os.PathLike = "runs",
    montage_per_class: int = 6,
    groups: str | os.PathLike | None = None,
) -> DataCheckResult:
    """Check a data folder before training and write ``data_report.md``, ``data_report.json`` and a montage.

    Args:
        data: an image folder (class sub-folders, or train/ val/ test/) or ``builtin:NAME``.
        output: the report folder; default ``project/check-data/<folder name>`` (numbered when it exists).
        near_distance: perceptual-hash bits (0-32) within which images are compared as near duplicates.
        project: the folder that holds run folders.
        montage_per_class: images per class in ``montage.png`` (0: no montage).
        groups: a ``file,group`` CSV (e.g. patient ids): groups with images in two splits are reported.

    Raises:
        ValueError: ``near_distance`` out of range; DataError: a missing, empty or badly laid out folder.
    """
    import numpy as np

    from sedensenet.data import load_image, resolve_data
    from sedensenet.data.check import check_data as run_check
    from sedensenet.data.dedupe import DEFAULT_NEAR_DISTANCE, check_near_distance
    from sedensenet.reports import new_run_dir
    from sedensenet.reports.data_report import write_data_report

    distance = DEFAULT_NEAR_DISTANCE if near_distance is None else near_distance
    check_near_distance(distance)
    root = resolve_data(str(data))
    check = run_check(root, near_distance=distance, groups=groups)
    if output is None:
        name = str(data).split(":", 1)[1] if str(data).startswith("builtin:") else Path(root).name or "data"
        out = new_run_dir(Path(project) / "check-data", name)
    else:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
    montage = []
    for label in check.classes:
        for ref in [f for f in check.files if f.label == label][:montage_per_class]:
            image = load_image(Path(check.root) / ref.path, 3)
            image.thumbnail((128, 128))
            montage.append((label, np.asarray(image)))
    files = write_data_report(check, out, montage)
    log.info("data report written to %s", out)
    return DataCheckResult(check, out, files)
