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
from sedensenet.engine.evaluation import write_evaluation, write_label_evaluation
from sedensenet.engine.predictor import Predictor
from sedensenet.engine.samples import labelled_samples
from sedensenet.reports import compute_metrics
from sedensenet.reports.clinical import positive_index
from sedensenet.reports.multilabel import multilabel_report


def evaluate_folder(
    predictor: Predictor,
    data: str | os.PathLike | None,
    *,
    split: str = "auto",
    output: str | os.PathLike | None = None,
    dedupe: str = "off",
    positive: str | None = None,
    seed: int = 0,
    split_record: str | os.PathLike | None = None,
) -> Any:
    """Metrics of ``predictor`` on a labelled folder, decided as its ``predict_files`` decides; the reports written to
    ``output`` when given. ``positive`` names the positive class of a two-class model (default: the stored one, else
    the second class). ``dedupe`` (``exact`` or ``near``) leaves out the val/test images that duplicate a training
    image. Batches are ``predictor.settings.batch_size`` images; ``seed`` seeds the bootstrap intervals. ``data`` None:
    the run's own data and split (its checkpoint's data description); ``split_record``: the run's ``split.csv``,
    checked against the images first."""
    meta = meta_for(predictor.meta, positive)
    samples, data_classes = labelled_samples(predictor.meta, data, split, dedupe, split_record=split_record)
    if data is None:
        data = predictor.meta.description().path
    res = predictor.run_samples(samples)
    res.targets = np.asarray([s.label for s in samples], dtype=np.float64 if meta.multilabel else np.int64)
    extra = {"data": str(data), "split": split, "data_classes": data_classes,
             "inference_backend": predictor.backend_used, "decision": meta.decision, "dedupe": dedupe,
             "tta": predictor.tta, "precision": precision_name(predictor.amp_dtype)}  # fmt: skip
    if meta.multilabel:
        return _evaluate_labels(predictor, meta, res, samples, output, extra, seed)
    if output is None:
        probs = postprocess(res.probs, meta)
        return compute_metrics(
            res.targets.tolist(), probs, predictor.classes, loss=res.loss, y_pred=decide(probs, meta),
            positive=positive_of(meta), threshold=meta.threshold,
            uncalibrated=res.probs if meta.temperature else None, temperature=meta.temperature, seed=seed,
        )  # fmt: skip
    return write_evaluation(Path(output), res, predictor.classes, samples, meta.in_chans, extra, meta=meta, seed=seed)


def _evaluate_labels(
    predictor: Predictor, meta: CheckpointMeta, res: Any, samples: list, output: str | os.PathLike | None,
    extra: dict[str, Any], seed: int,
) -> Any:  # fmt: skip
    """A multi-label model on labelled data: the CheXNet-style report (written to ``output`` when given)."""
    if output is not None:
        return write_label_evaluation(Path(output), res, predictor.classes, samples, extra, meta=meta, seed=seed)
    probs = postprocess(res.probs, meta)
    return multilabel_report(res.targets, probs, predictor.classes, meta.label_thresholds(), seed=seed, loss=res.loss)


def meta_for(meta: CheckpointMeta, positive: str | None) -> CheckpointMeta:
    """The metadata with ``positive`` as the positive class (checked before any image is read)."""
    if positive and meta.multilabel:
        raise ConfigError(f"--positive {positive}: this is a multi-label model; each label is decided on its own at "
                          "its threshold, so there is no positive class to name: drop --positive")  # fmt: skip
    if not positive or positive == meta.positive:
        return meta
    positive_index(list(meta.classes), positive)
    if meta.threshold is not None:
        raise ConfigError(
            f"--positive {positive!r}: this checkpoint's threshold {meta.threshold:.4f} is about "
            f"{meta.positive!r}; evaluate with --positive {meta.positive!r} or none"
        )
    return replace(meta, positive=positive)
