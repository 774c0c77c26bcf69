"""The public Python API: ``train``, ``evaluate``, ``predict``, ``load_model``.

Each function returns plain values and logs through ``logging``; the CLI is a thin shell over them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sedensenet import checkpoint as ckpt
from sedensenet.checkpoint import resolve_checkpoint
from sedensenet.config import ConfigError, TrainConfig, resolve_config
from sedensenet.engine.predictor import Prediction, probabilities_to_rows

__all__ = ["Prediction", "TrainResult", "evaluate", "load_model", "predict", "probabilities_to_rows",
           "resolve_checkpoint", "train", "training_config"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: the Keras-like history, the run folder and the final metrics."""

    history: Any
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    best_epoch: int = 0

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "weights" / "best.safetensors"


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
    return resolve_config(overrides, config_file=config, recommended=recommended), recommended


def train(
    data: str | None = None,
    *,
    config: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Train a DenseNet / SE-DenseNet on a folder of images and write a run folder.

    Args:
        data: image folder or ``builtin:digits`` / ``builtin:faces``.
        config: a YAML file of settings (e.g. a run folder's ``config.yaml``).
        resume: a run folder to continue from its last completed epoch.
        progress: show a progress bar per epoch (on a terminal).
        **overrides: any :class:`~sedensenet.config.TrainConfig` field, e.g. ``epochs=10, model="se_densenet121"``.

    Returns:
        :class:`TrainResult`; ``result.history.history["val_accuracy"]`` as with Keras.

    Raises:
        TrainingInterrupted: on Ctrl-C (SIGINT) or SIGTERM, after the current step; the run folder keeps the
            last complete epoch and ``exc.command`` continues the run. A second signal aborts at once.
    """
    from sedensenet.engine import distributed as dist
    from sedensenet.engine import session
    from sedensenet.engine.faults import stop_on_signals
    from sedensenet.engine.trainer import fit, write_run_header
    from sedensenet.fileio import remove_stale_temporaries

    device = dist.init(overrides.get("device", "auto")) if dist.launched_by_torchrun() else None
    if not dist.is_main():
        logging.getLogger("sedensenet").setLevel(logging.WARNING)  # one voice: rank 0 reports
    try:
        if resume:
            if dist.is_main():  # files a killed run was writing when it died
                for stale in remove_stale_temporaries(resume):
                    log.info("removed %s, left by an interrupted write", stale)
            ctx = session.resume(Path(resume), overrides, device=device)
        else:
            cfg, recommended = training_config(data, config, **overrides)
            _check_image_size(cfg)
            if recommended:
                log.info("built-in data %s: recommended settings %s", cfg.data, recommended)
            ctx = session.prepare(cfg, device=device)
            if dist.is_main():
                write_run_header(ctx)
        log_file = _log_to(ctx.run_dir / "train.log") if dist.is_main() else None
        try:
            log.info("run folder: %s  (%s)", ctx.run_dir, _data_summary(ctx.splits))
            with stop_on_signals(enabled=not dist.is_distributed()) as interrupt:
                history = fit(ctx, progress=progress, interrupt=interrupt)
            metrics = session.finish(ctx)
        finally:
            if log_file is not None:
                logging.getLogger("sedensenet").removeHandler(log_file)
                log_file.close()
        return TrainResult(history, ctx.run_dir, metrics, ctx.state.best_epoch)
    finally:
        dist.shutdown()


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


def _log_to(path: Path) -> logging.Handler:
    """Append the package's log records to the run's train.log (plain text, UTF-8)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("sedensenet")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def _data_summary(splits: Any) -> str:
    counts = {k: sum(v.values()) for k, v in splits.counts().items()}
    return (
        f"{len(splits.classes)} classes; "
        + ", ".join(f"{k} {n}" for k, n in counts.items() if n)
        + (f"; {len(splits.skipped)} files skipped (see skipped.csv)" if splits.skipped else "")
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
    amp: str = "auto",
) -> list[Prediction]:
    """Classify image files (folders are searched recursively); unreadable files get an error entry.

    ``backend``: how batches run (``auto``, ``onnxruntime``, ``eager``, ``compile`` or ``reference``, the
    unoptimised modules); see :data:`sedensenet.inference.BACKENDS`. ``amp``: ``auto`` (bf16 autocast on CPUs
    with bf16 matrix units and on GPUs, else float32), ``off`` (float32), ``bf16`` or ``fp16``.
    """
    from sedensenet.engine.predictor import Predictor

    predictor = Predictor.load(model, device=device, backend=backend, amp=amp)
    return predictor.predict_files(inputs, top_k=top_k, batch_size=batch_size)


def evaluate(
    model: str | os.PathLike | torch.nn.Module,
    data: str | os.PathLike,
    split: str = "auto",
    output: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str = "auto",
    backend: str = "auto",
    amp: str = "auto",
) -> Any:
    """Evaluate a checkpoint on a labelled folder and write the reports to ``output``.

    ``split``: ``auto`` (``test/`` if present, else ``val/``, else every image of a class-per-folder tree),
    or ``train``, ``val``, ``test``, ``all``. Classes are matched by name with the checkpoint's. ``backend`` as
    and ``amp`` as for :func:`predict`; metrics.json records the precision used.
    """
    from sedensenet.engine.predictor import Predictor

    predictor = Predictor.load(model, device=device, backend=backend, amp=amp)
    return predictor.evaluate_folder(data, split=split, output=output, batch_size=batch_size)
