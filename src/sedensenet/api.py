"""The public Python API: ``train``, ``evaluate``, ``predict``, ``load_model``.

Each function returns plain values and logs through ``logging``; the CLI is a thin shell over them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from sedensenet import checkpoint as ckpt
from sedensenet.checkpoint import resolve_checkpoint
from sedensenet.config import ConfigError, InferenceSettings, TrainConfig, load_yaml, resolve_config
from sedensenet.data import BUILTIN, DataSplits, is_builtin, load_image, resolve_data
from sedensenet.data.table import is_dataframe, is_table, read_image_list, write_dataframe
from sedensenet.display import Table
from sedensenet.engine.predictor import Prediction, Predictor, probabilities_to_rows, write_predictions
from sedensenet.engine.predictor import Predictions as _Predictions

__all__ = ["DataCheckResult", "InferenceSettings", "Prediction", "Predictions", "TrainResult", "check_data",
           "evaluate", "inference_settings", "load_model", "predict", "predict_sharded", "probabilities_to_rows",
           "resolve_checkpoint", "train", "training_config"]  # fmt: skip

if TYPE_CHECKING:
    from sedensenet.engine.run import EpochCallback

if TYPE_CHECKING:
    from sedensenet.engine.run import EpochCallback

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
    monitor: str = "val_accuracy"
    """The column that picked the best epoch (``--monitor``, ``auto`` made concrete for the data)."""

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
    data: str | Any | None = None,
    *,
    config: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    verbose: int = 1,
    progress: bool = False,
    tune_malloc: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    **overrides: Any,
) -> TrainResult:
    """Train a DenseNet / SE-DenseNet on a folder of images and write a run folder.

    Args:
        data: image folder, CSV / TSV manifest (``labels.csv``; see the ``image_col`` ... ``skip_missing``
            settings), a pandas DataFrame of the same columns (written into the run folder as ``manifest.csv``), or
            ``builtin:digits`` / ``builtin:faces``.
        config: a YAML file of settings (e.g. a run folder's ``config.yaml``).
        resume: a run folder to continue from its last completed epoch.
        verbose: as Keras' ``fit``: 0 silent, 1 a live progress bar per epoch (a widget in Jupyter, text on a
            terminal) and one line per epoch on stdout (``loss: … - accuracy: … - val_loss: … - val_accuracy: …``),
            2 the lines alone (for log files).
        progress: show the progress bar whatever ``verbose`` says (on a terminal; the CLI's mode).
        tune_malloc: tune glibc's allocator for speed unless the run is memory-efficient
            (:func:`sedensenet.inference.tune_malloc`: 1.3-1.5x faster CPU steps at 5-20% more peak memory; the whole
            process; ``SEDENSENET_MALLOC=default`` opts out), as the ``train`` command always has.
        callbacks: called after each saved epoch with :class:`~sedensenet.engine.run.EpochEnd`; one may raise
            :class:`~sedensenet.engine.faults.StopRun` to end the run there (no final evaluation).
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
    if not resume and is_dataframe(data):
        data = _dataframe_manifest(data, config, overrides)
    if not resume:
        cfg, recommended = training_config(data, config, **overrides)
        _check_image_size(cfg)
    uri = overrides.get("mlflow", cfg.mlflow if cfg else _recorded_mlflow(resume))
    run = _tracked(uri, train_run, cfg, resume=resume or None, overrides=overrides, recommended=recommended,
                   progress=reporter, tune_malloc=tune_malloc, callbacks=callbacks)  # fmt: skip
    return TrainResult(run.history, run.run_dir, run.metrics, run.best_epoch, run.memory_plan, run.monitor)


def _dataframe_manifest(frame: Any, config: str | os.PathLike | None, overrides: dict[str, Any]) -> str:
    """A DataFrame becomes the run's manifest: written to ``RUN/manifest.csv`` (the run folder made here and reused
    by the run), so the run can be redone from its folder. Its relative image paths stay relative to the working
    folder (``image_root``, unless given)."""
    from sedensenet.reports import new_run_dir

    settings = resolve_config({**overrides, "data": "dataframe"}, config_file=config)
    run_dir = new_run_dir(settings.project, settings.name, settings.exist_ok)
    overrides.update(name=run_dir.name, exist_ok=True, image_root=settings.image_root or os.getcwd())
    return str(write_dataframe(frame, run_dir / "manifest.csv"))


def _tracked(uri: str | None, train_run: Any, cfg: TrainConfig | None, *, callbacks: Sequence[Any], **kw: Any) -> Any:
    """``train_run`` with the MLflow tracker among its callbacks when ``uri`` is given (``--mlflow``); the MLflow
    run ends with the training run: FINISHED (stopped by a callback: tagged with the reason), or KILLED on an
    error or a signal."""
    from sedensenet.engine.faults import StopRun

    tracker = _tracker(uri)
    try:
        # the tracker first: it logs the epoch before a callback may end the run there
        run = train_run(cfg, callbacks=[*([tracker] if tracker else []), *callbacks], **kw)
    except StopRun as e:  # a callback ended the run after a saved epoch (a tuning trial): not a failure
        if tracker is not None:
            tracker.finish(Path(), {}, tags={"sedensenet.stopped": e.reason})
        raise
    except BaseException:
        if tracker is not None:
            tracker.finish(Path(), {}, status="KILLED")
        raise
    if tracker is not None:
        tracker.finish(run.run_dir, run.metrics)
    return run


def _recorded_mlflow(resume: str | os.PathLike | None) -> str | None:
    """The ``mlflow`` setting a resumed run was started with (its config.yaml)."""
    path = Path(resume) / "config.yaml" if resume else None
    return load_yaml(path).get("mlflow") if path is not None and path.is_file() else None


def _tracker(uri: str | None) -> Any:
    """The MLflow epoch callback when the run is tracked (``mlflow`` is imported only then)."""
    if uri is None:
        return None
    from sedensenet.tracking import RunTracker

    return RunTracker(uri)


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


def inference_settings(settings: InferenceSettings | None = None, **options: Any) -> InferenceSettings:
    """``settings`` (default: :class:`~sedensenet.config.InferenceSettings`'s defaults) with the fields in
    ``options`` replaced: the one place the keyword arguments of :func:`predict`, :func:`evaluate` and
    :func:`predict_sharded` become settings (checked once, in the dataclass)."""
    names = {f.name for f in dataclasses.fields(InferenceSettings)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown inference setting(s) {unknown}; valid: {', '.join(sorted(names))}")
    return dataclasses.replace(settings or InferenceSettings(), **options)


def _tune_malloc(tune: bool) -> None:
    if tune:
        from sedensenet.inference import tune_malloc

        log.debug("%s", tune_malloc())  # 1.3-1.6x faster CPU inference under glibc


class Predictions(_Predictions):
    """The list :func:`predict` returns: a table (a multi-label model's: each image's decided labels and every
    label's probability) in print and in Jupyter, and :meth:`plot`."""

    thresholds: dict[str, float] | None = None
    """Multi-label: each label's threshold (the checkpoint's), shown under the table and marked on the bars."""

    @property
    def multilabel(self) -> bool:
        return any(p.scores is not None for p in self)

    def table(self) -> Table:
        if not self.multilabel:
            return super().table()
        names = next(list(p.scores) for p in self if p.scores is not None)
        errors = any(p.error for p in self)
        rows = [
            [p.path, ", ".join(p.labels or []) if p.scores is not None else "",
             *(p.scores[n] if p.scores is not None else None for n in names), *([p.error or ""] if errors else [])]
            for p in self
        ]  # fmt: skip
        notes = [] if not self.thresholds else [
            "decided at each label's threshold: " + ", ".join(f"{n} {t:.4f}" for n, t in self.thresholds.items())
        ]  # fmt: skip
        header = ["path", "labels", *names, *(["error"] if errors else [])]
        return Table(header, rows, title=f"{len(self)} predictions, {len(names)} labels", notes=notes)

    def plot(self, ncols: int = 2, max_images: int = 16) -> Any:
        """Each image (the first ``max_images``) beside its probabilities as bars: every label's, with the decided
        labels in colour and each label's threshold marked (multi-label), or the top-k classes' with the decided one in
        colour; captioned with the decision. A Figure that shows inline in Jupyter."""
        from sedensenet.reports.explain_plots import predictions_figure
        from sedensenet.reports.figures import missing_glyphs_silenced

        cells = [_prediction_cell(p, self.thresholds) for p in self[:max_images]]
        with missing_glyphs_silenced():
            return predictions_figure(cells, ncols=ncols)


def _prediction_cell(p: Prediction, thresholds: dict[str, float] | None) -> Any:
    """One image of :meth:`Predictions.plot`: a thumbnail (None when unreadable), the caption and the bars."""
    import numpy as np

    from sedensenet.reports.explain_plots import PredictionCell

    if p.error:
        return PredictionCell(None, f"{Path(p.path).name}\nerror: {p.error}")
    image = load_image(p.path, 3)
    image.thumbnail((256, 256))
    if p.scores is not None:
        decided = ", ".join(p.labels or []) or "none decided"
        return PredictionCell(np.asarray(image), f"{Path(p.path).name}\n{decided}", dict(p.scores), p.labels or [],
                              thresholds)  # fmt: skip
    caption = f"{Path(p.path).name}\n{p.label} ({p.probability or 0.0:.2f})"
    return PredictionCell(np.asarray(image), caption, dict(p.top_k), [p.label or ""])


def predict(
    model: str | os.PathLike | torch.nn.Module,
    inputs: list[str | os.PathLike] | str | os.PathLike,
    top_k: int = 1,
    *,
    output: str | os.PathLike | None = None,
    image_col: str | None = None,
    image_root: str | os.PathLike | None = None,
    image_ext: str | None = None,
    encoding: str = "utf-8",
    settings: InferenceSettings | None = None,
    tune_malloc: bool = True,
    **options: Any,
) -> Predictions:
    """Classify image files (folders are searched recursively); unreadable files get an error entry.

    The label is the checkpoint's decision: its temperature applied, then its threshold (two classes) or the argmax;
    ``probability`` and ``top_k`` are the calibrated probabilities.

    Args:
        model: checkpoint .safetensors, run folder or exported .onnx (or a model from :func:`load_model`).
        inputs: image files or folders, or one CSV / TSV manifest (its image column is read; its other columns are
            written through to ``output``, prefixed ``input_`` where a name collides with a prediction column).
        top_k: how many of the most probable classes each prediction lists.
        output: write predictions to a .csv or .json file.
        image_col: a manifest's image column (default: found by name, as for training).
        image_root: the folder a manifest's image paths are relative to (default: the manifest's folder).
        image_ext: appended to a manifest's image names that lack it (tables of ids).
        encoding: a manifest's text encoding (e.g. gbk).
        settings: how batches run (device, backend, ``amp``, TTA, batch size, workers): see
            :class:`~sedensenet.config.InferenceSettings`.
        tune_malloc: tune glibc's allocator for speed (:func:`sedensenet.inference.tune_malloc`; the whole process;
            ``SEDENSENET_MALLOC=default`` opts out), as the ``predict`` command always has.
        **options: any field of ``settings`` by name, e.g. ``device="cpu", amp="off", tta="vflip"``.
    """
    run = inference_settings(settings, **options)
    _tune_malloc(tune_malloc)
    columns = None
    if isinstance(inputs, str | os.PathLike) or len(inputs) == 1:
        single = inputs if isinstance(inputs, str | os.PathLike) else inputs[0]
        if is_table(single) and Path(single).is_file():  # a manifest: its image column, its other columns through
            inputs, columns = read_image_list(single, image_col=image_col, image_root=image_root, image_ext=image_ext,
                                              encoding=encoding)  # fmt: skip
    predictor = Predictor.load(model, run)
    preds = Predictions(predictor.predict_files(inputs, top_k=top_k))
    if predictor.meta.multilabel and predictor.meta.labels:
        preds.thresholds = {d.name: d.threshold for d in predictor.meta.labels}
    if output is not None:
        write_predictions(output, preds, columns=columns)
    return preds


def predict_sharded(
    model: str | os.PathLike,
    inputs: list[str | os.PathLike] | str | os.PathLike,
    output: str | os.PathLike | None,
    *,
    top_k: int = 1,
    resume: bool = False,
    settings: InferenceSettings | None = None,
    tune_malloc: bool = True,
    **options: Any,
) -> Any:
    """Bulk prediction in every process torchrun started (or in this one alone): each predicts a share of the
    sorted file list, rank 0 merges one CSV in input order.

    Args:
        model: checkpoint .safetensors, run folder or exported .onnx.
        inputs: image files or folders.
        output: the merged .csv (required: sharded prediction writes its rows to a file).
        top_k: how many of the most probable classes each row lists.
        resume: sharded prediction (torchrun): keep the parts a killed run of the same job already wrote.
        settings: how batches run, as for :func:`predict`.
        tune_malloc: as for :func:`predict`.
        **options: any field of ``settings`` by name.

    Returns:
        Rank 0's :class:`~sedensenet.engine.sharded.ShardedResult`, ``None`` on the other ranks. See
        :mod:`sedensenet.engine.sharded`.
    """
    import datetime

    from sedensenet.engine import distributed as dist
    from sedensenet.engine.device import select_device
    from sedensenet.engine.sharded import predict_sharded as run_shard

    if output is None:
        raise ConfigError("sharded prediction (torchrun, --resume) writes its rows to a file: give --output FILE.csv")
    run = inference_settings(settings, **options)
    _tune_malloc(tune_malloc)
    # Ranks wait for the slowest share before the merge: a day, not the 30 minutes a training step may take.
    torchrun = dist.launched_by_torchrun()
    dev = dist.init(run.device, timeout=datetime.timedelta(hours=24)) if torchrun else select_device(run.device)
    if not dist.is_main():
        logging.getLogger("sedensenet").setLevel(logging.WARNING)  # one voice: rank 0 reports
    try:
        run = dataclasses.replace(run, device=str(dev))
        return run_shard(model, inputs, output, top_k=top_k, resume=resume, settings=run)
    finally:
        dist.shutdown(clean=sys.exc_info()[0] is None)


def evaluate(
    model: str | os.PathLike | torch.nn.Module,
    data: str | os.PathLike | None = None,
    split: Literal["auto", "train", "val", "test", "all"] = "auto",
    output: str | os.PathLike | None = None,
    *,
    dedupe: Literal["off", "exact", "near"] = "off",
    positive: str | None = None,
    seed: int = 0,
    settings: InferenceSettings | None = None,
    tune_malloc: bool = True,
    **options: Any,
) -> Any:
    """Evaluate a checkpoint on a labelled folder and write the reports to ``output``.

    Classes are matched by name with the checkpoint's; its temperature and threshold decide, as in :func:`predict`.
    metrics.json records the backend, TTA and precision used.

    Args:
        model: checkpoint .safetensors or run folder (or a model from :func:`load_model`).
        data: labelled image folder (class sub-folders), CSV / TSV manifest or builtin:NAME (default: the run's own
            data, split as the run split it; a run folder's ``split.csv`` is checked against the images first).
        split: auto (test/ if present, else val/, else every image of a class-per-folder tree), train, val, test,
            all.
        output: folder for the reports (the command's default: RUN/eval_SPLIT; from Python, none returns the
            metrics and writes nothing).
        dedupe: leave out val/test images that duplicate training images (exact: same pixels; near: also
            re-encoded or resized copies).
        positive: two classes: the positive class (default: the checkpoint's, else the second).
        seed: seed of the bootstrap resamples behind the 95% intervals.
        settings: how batches run, as for :func:`predict`.
        tune_malloc: as for :func:`predict`.
        **options: any field of ``settings`` by name.
    """
    from sedensenet.engine.labelled import evaluate_folder

    run = inference_settings(settings, **options)
    _tune_malloc(tune_malloc)
    record = None
    if isinstance(model, str | os.PathLike):
        weights = resolve_checkpoint(model).parent
        record = weights.parent / "split.csv" if weights.name == "weights" else None
    return evaluate_folder(Predictor.load(model, run), data, split=split, output=output, dedupe=dedupe,
                           positive=positive, seed=seed, split_record=record)  # fmt: skip


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
    image_col: str | None = None,
    label_col: str | None = None,
    image_root: str | os.PathLike | None = None,
    image_ext: str | None = None,
    encoding: str = "utf-8",
) -> DataCheckResult:
    """Check a data folder or manifest before training and write ``data_report.md``, ``data_report.json`` and a
    montage.

    Args:
        data: an image folder (class sub-folders, or train/ val/ test/), a CSV / TSV manifest (its rows whose file
            is missing are listed as skipped; other table problems stop with the row named) or ``builtin:NAME``.
        output: the report folder; default ``project/check-data/<folder name>`` (numbered when it exists).
        near_distance: perceptual-hash bits (0-32) within which images are compared as near duplicates.
        project: the folder that holds run folders.
        montage_per_class: images per class in ``montage.png`` (0: no montage).
        groups: a ``file,group`` CSV (e.g. patient ids): groups with images in two splits are reported.
        image_col: a manifest's image column (default: found by name, as for training).
        label_col: a manifest's label column (default: found by name).
        image_root: the folder a manifest's image paths are relative to (default: the manifest's folder).
        image_ext: appended to a manifest's image names that lack it (tables of ids).
        encoding: a manifest's text encoding (e.g. gbk).

    Raises:
        ValueError: ``near_distance`` out of range; DataError: a missing, empty or badly laid out folder or table.
    """
    from sedensenet.data.check import check_data as run_check
    from sedensenet.data.dedupe import DEFAULT_NEAR_DISTANCE, check_near_distance
    from sedensenet.reports import new_run_dir
    from sedensenet.reports.data_report import write_data_report

    distance = DEFAULT_NEAR_DISTANCE if near_distance is None else near_distance
    check_near_distance(distance)
    root, splits = _data_to_check(data, groups, image_col=image_col, label_col=label_col, image_root=image_root,
                                  image_ext=image_ext, encoding=encoding)  # fmt: skip
    check = run_check(root, near_distance=distance, groups=groups, splits=splits)
    if output is None:
        name = str(data).split(":", 1)[1] if str(data).startswith("builtin:") else Path(root).name or "data"
        out = new_run_dir(Path(project) / "check-data", name)
    else:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
    files = write_data_report(check, out, _montage(check, montage_per_class))
    log.info("data report written to %s", out)
    return DataCheckResult(check, out, files)


def _data_to_check(
    data: str | os.PathLike, groups: str | os.PathLike | None, **table: Any
) -> tuple[Path, DataSplits | None]:
    """The folder to check and, for a manifest, its rows as one resolved split (missing files listed as skipped)."""
    from sedensenet.data.description import DataDescription, TableColumns, resolve

    description = DataDescription.for_data(data)
    if description.source != "table":  # a folder, or a built-in folder set (builtin:digit-pairs is a table)
        return Path(resolve_data(str(data))), None
    description = DataDescription.for_data(
        data, columns=TableColumns(image=table["image_col"], label=table["label_col"]),
        image_root=os.path.abspath(table["image_root"]) if table["image_root"] else None,
        image_ext=table["image_ext"], encoding=table["encoding"], skip_missing=True, val_split=0.0,
        groups_file=os.path.abspath(groups) if groups else None,
    )  # fmt: skip
    splits = resolve(description)
    return Path(splits.root), splits


def _montage(check: Any, per_class: int) -> list[tuple[str, Any]]:
    """Up to ``per_class`` thumbnails (128 px) of each class, for ``montage.png``."""
    import numpy as np

    montage = []
    for label in check.classes:
        for ref in [f for f in check.files if f.label == label][:per_class]:
            image = load_image(Path(check.root) / ref.path, 3)
            image.thumbnail((128, 128))
            montage.append((label, np.asarray(image)))
    return montage
