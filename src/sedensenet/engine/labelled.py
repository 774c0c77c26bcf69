"""Evaluation on labelled data: a predictor's metrics on a split of a labelled folder, decided as ``predict``
decides, with the reports written (``evaluate``)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sedensenet.checkpoint import CheckpointMeta
from sedensenet.config import ConfigError
from sedensenet.engine.decision import decide, positive_of, postprocess
from sedensenet.engine.device import precision_name
from sedensenet.engine.evaluation import write_evaluation
from sedensenet.engine.predictor import Predictor
from sedensenet.engine.samples import labelled_samples
from sedensenet.reports import compute_metrics
from sedensenet.reports.clinical import positive_index


def evaluate_folder(
    predictor: Predictor,
    data: str | os.PathLike,
    *,
    split: str = "auto",
    output: str | os.PathLike | None = None,
    dedupe: str = "off",
    positive: str | None = None,
    seed: int = 0,
) -> Any:
    """Metrics of ``predictor`` on a labelled folder, decided as its ``predict_files`` decides; the reports written to
    ``output`` when given. ``positive`` names the positive class of a two-class model (default: the stored one, else
    the second class). ``dedupe`` (``exact`` or ``near``) leaves out the val/test images that duplicate a training
    image. Batches are ``predictor.settings.batch_size`` images; ``seed`` seeds the bootstrap intervals."""
    meta = meta_for(predictor.meta, positive)
    samples, data_classes = labelled_samples(predictor.meta, data, split, dedupe)
    res = predictor.run_samples(samples)
    res.targets = np.asarray([s.label for s in samples])
    if output is None:
        probs = postprocess(res.probs, meta)
        return compute_metrics(
            res.targets.tolist(), probs, predictor.classes, loss=res.loss, y_pred=decide(probs, meta),
            positive=positive_of(meta), threshold=meta.threshold,
            uncalibrated=res.probs if meta.temperature else None, temperature=meta.temperature, seed=seed,
        )  # fmt: skip
    extra = {"data": str(data), "split": split, "data_classes": data_classes,
             "inference_backend": predictor.backend_used, "decision": meta.decision, "dedupe": dedupe,
             "tta": predictor.tta,
             "precision": precision_name(predictor.amp_dtype)}  # fmt: skip
    return write_evaluation(Path(output), res, predictor.classes, samples, meta.in_chans, extra, meta=meta, seed=seed)


def meta_for(meta: CheckpointMeta, positive: str | None) -> CheckpointMeta:
    """The metadata with ``positive`` as the positive class (checked before any image is read)."""
    if not positive or positive == meta.positive:
        return meta
    positive_index(list(meta.classes), positive)
    if meta.threshold is not None:
        raise ConfigError(
            f"--positive {positive!r}: this checkpoint's threshold {meta.threshold:.4f} is about "
            f"{meta.positive!r}; evaluate with --positive {meta.positive!r} or none"
        )
    return replace(meta, positive=positive)
