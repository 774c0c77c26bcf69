"""Set a training run up (data, model, optimiser, run folder, resume) and finish it (final reports)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sedensenet import checkpoint as ckpt
from sedensenet.columns import default_monitor
from sedensenet.config import (
    RESUME_MAY_CHANGE,
    ConfigError,
    InferenceSettings,
    TrainConfig,
    load_yaml,
    parse_duration,
    parse_window,
    resolve_config,
)
from sedensenet.data import DataError, DataSplits
from sedensenet.data.check import drop_duplicates_of_train, exact_leaks, groups_across_splits
from sedensenet.data.description import DataDescription, TableColumns, resolve
from sedensenet.engine import build, memory
from sedensenet.engine import distributed as dist
from sedensenet.engine.budget import TimeBudget, format_seconds
from sedensenet.engine.decision import check_decision_settings, check_label_settings, fit_decision
from sedensenet.engine.device import (
    AMP_DTYPES,
    amp_dtype,
    precision_name,
    seed_everything,
    select_device,
    step_settings,
)
from sedensenet.engine.evaluation import record_evaluation, write_evaluation, write_label_evaluation
from sedensenet.engine.loader import make_loader
from sedensenet.engine.loop import MaskedBCEWithLogits, weighted_loss
from sedensenet.engine.state import RunContext, restore
from sedensenet.reports import check_writable, new_run_dir

log = logging.getLogger(__name__)


def describe(config: TrainConfig) -> DataDescription:
    """The run's data and split as one :class:`~sedensenet.data.description.DataDescription` (what the checkpoint
    stores, and what ``evaluate RUN``, ``export --quantize`` and ``cv`` resolve again)."""
    c = config
    columns = TableColumns(image=c.image_col or None, label=c.label_col or None, group=c.group_col or None,
                           split=c.split_col or None)  # fmt: skip
    try:
        return DataDescription.for_data(
            c.data, image_root=os.path.abspath(c.image_root) if c.image_root else None, image_ext=c.image_ext or None,
            columns=columns, encoding=c.encoding, skip_missing=c.skip_missing,
            groups_file=os.path.abspath(c.groups) if c.groups else None, val_split=c.val_split,
            split_seed=c.data_split_seed, folds=c.folds or None, fold=c.fold or None, dedupe=c.dedupe,
            max_pixels=c.max_pixels, dicom_window=parse_window(c.dicom_window), task=c.task,
            label_delim=c.label_delim, none_label=c.none_label or None, uncertain=c.uncertain, missing=c.missing,
        )  # fmt: skip
    except DataError as e:
        raise ConfigError(str(e)) from None


def scan(config: TrainConfig) -> DataSplits:
    """Resolve the run's data (a folder, a CSV / TSV manifest or ``builtin:NAME``) as :func:`describe` says, check
    every file in it, warn of exact leaks and drop duplicates of training images from val/test when
    ``config.dedupe`` asks. With ``config.folds``, fold ``config.fold`` is the test split and train and val come
    from the other folds (groups and duplicate clusters kept whole)."""
    description = describe(config)
    splits = resolve(replace(description, dedupe="off"))
    warn_leaks(splits, config.dedupe)
    splits, dropped = drop_duplicates_of_train(splits, config.dedupe)
    if config.dedupe != "off":
        log.info("--dedupe %s: dropped %d val and %d test images that duplicate training images",
                 config.dedupe, dropped["val"], dropped["test"])  # fmt: skip
    if len(splits.train) < 2:
        raise DataError(f"{description.path}: training needs at least 2 images, found {len(splits.train)}")
    return splits


def warn_leaks(splits: DataSplits, dedupe: str) -> None:
    """Log a warning when files with the same pixels sit in two splits or under two classes."""
    rows = exact_leaks(splits)
    leaks = sum(r["split"] != r["copy_split"] for r in rows)
    conflicts = sum(r["class"] != r["copy_class"] for r in rows)
    parts = []
    if leaks:
        advice = "" if dedupe != "off" else "; --dedupe exact drops them from val/test"
        parts.append(f"{leaks} exact copies across splits (their scores will be optimistic{advice})")
    if conflicts:
        parts.append(f"{conflicts} exact copies under another class (conflicting labels)")
    spread = groups_across_splits(splits)
    if spread:
        log.warning("%d groups have images in more than one split folder (e.g. %s in %s): their scores will be "
                    "optimistic; move each group into one split", len(spread), *next(iter(spread.items())))  # fmt: skip
    if parts:
        log.warning("%s: listed in the run folder's duplicates.csv; `sedensenet check-data %s` finds near "
                    "duplicates too", ", ".join(parts), splits.root)  # fmt: skip


def prepare(
    config: TrainConfig,
    run_dir: Path | None = None,
    device: torch.device | None = None,
    epochs_done: int = 0,
    died: dict[str, Any] | None = None,
) -> RunContext:
    """Everything a run needs, in order: device, memory plan, data, model, optimiser, run folder.

    ``run_dir`` given (resume) reuses that folder; otherwise a new ``project/name[N]`` is made on rank 0.
    ``epochs_done``: the epochs a resumed run has behind it (``--compile auto`` weighs the remaining ones).
    ``died``: the note a killed run left (:func:`~sedensenet.engine.memory.last_run_died`); the plan stays below it.
    The plan is ``ctx.memory_plan``; ``config`` is left as it was given. A ``--time`` budget starts counting here.
    """
    budget = TimeBudget(parse_duration(config.time), cap=config.epochs).start() if config.time else None
    device = device or select_device(config.device)
    if config.sync_bn and dist.is_distributed() and device.type != "cuda":
        # PyTorch's SyncBatchNorm has kernels for GPUs only: fail here, not in the first forward pass.
        raise ConfigError(f"--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no {device.type} kernels); drop it")
    config = _resolve_amp(config, device)
    plan = _plan_memory(config, device, died)
    seed_everything(config.seed)
    splits = scan(config)
    config = _resolve_monitor(config, splits)
    _check_decisions(config, splits)
    _check_batch(config, splits)
    model = build.build_model(config, len(splits.classes), memory_efficient=plan.memory_efficient).to(device)
    settings, scaler = step_settings(config, device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = build.normalization(splits, normalize=config.normalize, image_size=config.image_size,
                                    in_chans=config.in_chans)  # fmt: skip
    settings.mean, settings.std = _channel_stats(mean, std, config.in_chans, device)
    cache = build.open_cache(config, splits)
    train_loader, val_loader = _loaders(config, splits, mean, std, cache, device)
    c = config
    optimizer = build.build_optimizer(model, name=c.optimizer, lr=c.lr, weight_decay=c.weight_decay,
                                      momentum=c.momentum)  # fmt: skip
    scheduler = build.build_scheduler(optimizer, name=c.scheduler, epochs=c.epochs, warmup_epochs=c.warmup_epochs,
                                      patience=c.patience, fitted=budget is not None)  # fmt: skip
    return RunContext(
        config=config,
        run_dir=run_dir or _new_run_dir(config),
        splits=splits,
        model=model,
        train_model=_wrap(model, config, device, len(train_loader), max(0, config.epochs - epochs_done)),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        criterion=_criterion(config, splits, device),
        settings=settings,
        train_loader=train_loader,
        val_loader=val_loader,
        meta=_meta(config, splits, model, mean, std),
        memory_plan=plan,
        cache=cache,
        budget=budget,
    )


def _check_decisions(config: TrainConfig, splits: DataSplits) -> None:
    """The threshold, positive class and calibration the run asks for, refused before training if they cannot work."""
    if is_multilabel(splits):
        check_label_settings(config.threshold, config.positive, config.calibrate, has_validation=bool(splits.val))
    else:
        check_decision_settings(
            config.threshold, config.positive, config.calibrate, splits.classes, [s.label for s in splits.val]
        )


def _resolve_monitor(config: TrainConfig, splits: DataSplits) -> TrainConfig:
    """``--monitor auto`` made concrete for this data (config.yaml records the choice, so a resume keeps it)."""
    if config.monitor != "auto":
        return config
    monitor = default_monitor(multilabel=is_multilabel(splits), class_weights=config.class_weights)
    if monitor != "val_accuracy":
        log.info("--monitor auto: the best epoch is the one of the highest %s (%s)", monitor,
                 "multi-label" if is_multilabel(splits) else "--class-weights auto")  # fmt: skip
    return replace(config, monitor=monitor)


def _resolve_amp(config: TrainConfig, device: torch.device) -> TrainConfig:
    """``--amp auto`` made concrete before the memory plan, which depends on it: rank 0's reading of its device
    (:func:`~sedensenet.engine.device.amp_dtype`), taken by every process, so that ranks on machines with and
    without fast bf16 train in one precision, and recorded in config.yaml, so that a resume on another machine
    keeps the precision the run started in."""
    if config.amp != "auto":
        return config
    names, dtypes = list(AMP_DTYPES), list(AMP_DTYPES.values())
    code = dtypes.index(amp_dtype("auto", device, training=True)) if dist.is_main() else 0
    return replace(config, amp=names[dist.rank0_decides(code, device)])


def _meta(
    config: TrainConfig, splits: DataSplits, model: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> ckpt.CheckpointMeta:
    """The checkpoint metadata every epoch's weights carry: architecture, classes, preprocessing, data set."""
    return ckpt.CheckpointMeta(
        model=model.config.to_dict(), classes=splits.classes, image_size=config.image_size,
        task="multi" if is_multilabel(splits) else "single",
        mean=list(mean), std=list(std), data=describe(config),
        extra={"data": str(config.data), "val_split": config.val_split, "seed": config.data_split_seed,
               "groups": config.groups, "train_images": len(splits.train), "val_images": len(splits.val),
               **({"folds": config.folds, "fold": config.fold} if config.folds else {})},
    )  # fmt: skip


def _plan_memory(config: TrainConfig, device: torch.device, died: dict[str, Any] | None) -> memory.MemoryPlan:
    """Rank 0 chooses the path (:func:`~sedensenet.engine.memory.plan_memory`); every process takes its choice."""
    holder: list[Any] = [None]
    if dist.is_main():
        try:
            holder[0] = _choose(config, device, died).to_dict()
        except memory.MemoryPlanError as e:
            holder[0] = str(e)
        if died:
            log.warning("%s; %s", memory.describe_death(died), _changed(died, holder[0], config))
    if dist.is_distributed():
        torch.distributed.broadcast_object_list(holder, src=0)
    if isinstance(holder[0], str):
        raise memory.MemoryPlanError(holder[0])
    return memory.MemoryPlan(**holder[0])


def _choose(config: TrainConfig, device: torch.device, died: dict[str, Any] | None) -> memory.MemoryPlan:
    """The plan below where a killed run died; when nothing fits there (a kill need not mean memory), the usual one."""
    batch, replicas = dist.local_batch_size(config.batch_size), dist.world_size()
    if died:
        try:
            return memory.plan_memory(config, device, batch, replicas, cap=int(died["peak_rss_gb"] * memory.GB))
        except memory.MemoryPlanError as e:
            log.warning("below the size at which the last run died nothing fits (%s); planning without it", e)
    return memory.plan_memory(config, device, batch, replicas)


def _changed(died: dict[str, Any], plan: dict[str, Any] | str, config: TrainConfig) -> str:
    if isinstance(plan, str):
        return "this run stops before training: " + plan
    return memory.what_changed(died, memory.MemoryPlan(**plan), config)


def _loaders(
    config: TrainConfig,
    splits: DataSplits,
    mean: Sequence[float],
    std: Sequence[float],
    cache: Any,
    device: torch.device,
) -> tuple[DataLoader, DataLoader | None]:
    """This process's shard of the training split (shuffled) and of the validation split (None when empty)."""
    replicas, rank = dist.world_size(), dist.rank()
    batch = dist.local_batch_size(config.batch_size)

    def loader(samples: list, train: bool) -> DataLoader:
        dataset = build.make_dataset(config, samples, mean, std, train=train, cache=cache)
        return make_loader(dataset, batch, seed=config.seed, train=train, device=device, workers=config.workers,
                           num_replicas=replicas, rank=rank)  # fmt: skip

    return loader(splits.train, True), loader(splits.val, False) if splits.val else None


def _criterion(config: TrainConfig, splits: DataSplits, device: torch.device) -> nn.Module:
    """Cross-entropy with the run's label smoothing and (``class_weights='auto'``) class weights; for a multi-label
    run, binary cross-entropy masked where a label is ignored, with (``auto``) each label's positive weight."""
    if is_multilabel(splits):
        pos_weight = build.positive_weight_tensor(splits) if config.class_weights == "auto" else None
        return MaskedBCEWithLogits(pos_weight.to(device) if pos_weight is not None else None,
                                   label_smoothing=config.label_smoothing)  # fmt: skip
    weights = build.class_weight_tensor(splits) if config.class_weights == "auto" else None
    return nn.CrossEntropyLoss(
        weight=weights.to(device) if weights is not None else None, label_smoothing=config.label_smoothing
    )


def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], in_chans: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel tensors for normalising uint8 batches (one value repeated when given fewer than channels)."""
    m, s = list(mean), list(std)
    m = [m[c % len(m)] for c in range(in_chans)]
    s = [s[c % len(s)] for c in range(in_chans)]
    return torch.tensor(m, device=device), torch.tensor(s, device=device)


def _check_batch(config: TrainConfig, splits: DataSplits) -> None:
    if config.batch_size > len(splits.train):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the training split ({len(splits.train)} images); "
            f"use --batch-size {max(2, len(splits.train) // 2)} or fewer"
        )


def _new_run_dir(config: TrainConfig) -> Path:
    """Rank 0 creates the folder and checks it can be written; other ranks learn its name."""
    if dist.is_main():
        run_dir = new_run_dir(config.project, config.name, config.exist_ok)
        check_writable(run_dir)
    else:
        run_dir = None
    if dist.is_distributed():
        holder = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    return Path(run_dir)


def _wrap(
    model: nn.Module, config: TrainConfig, device: torch.device, steps_per_epoch: int, epochs_left: int
) -> nn.Module:
    """The module the training loop calls: SyncBN and DDP when distributed, torch.compile when asked.

    ``--compile auto`` weighs the cost of compiling against the ``epochs_left`` this process will train (0 under a
    time budget without an epoch cap: not known, so not compiled).
    """
    wrapped: nn.Module = model
    if dist.is_distributed():
        if config.sync_bn:
            wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        ids = [device.index] if device.type == "cuda" else None
        # Freezing epochs leave some parameters without gradients.
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=ids, find_unused_parameters=bool(config.freeze_epochs)
        )
    compile_now = config.compile == "on"
    if config.compile == "auto":
        from sedensenet.inference import should_compile

        compile_now, reason = should_compile(device.type, steps_per_epoch, epochs_left)
        log.info("--compile auto: %s", reason)
    if compile_now:
        log.info("compiling the model with torch.compile (the first steps are slow)")
        wrapped = torch.compile(wrapped)
    return wrapped


def resume(run_dir: Path, overrides: dict[str, Any] | None = None, device: torch.device | None = None) -> RunContext:
    """Rebuild a run from its folder (config.yaml, weights/last.safetensors, state/last.pt) to continue it."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); pass the folder that train created")
    bad = sorted(set(overrides or {}) - RESUME_MAY_CHANGE)
    if bad:
        raise ConfigError(
            f"--resume continues the run as configured; only {sorted(RESUME_MAY_CHANGE)} may change, not {bad}"
        )
    config = resolve_config(overrides, config_file=run_dir / "config.yaml")
    died = memory.last_run_died(run_dir)
    if died and not (run_dir / "state" / "last.pt").is_file():
        raise ConfigError(
            f"{run_dir}: {memory.describe_death(died)}, before its first epoch was saved: nothing to resume. "
            f"Start again below that size: sedensenet train --config {run_dir / 'config.yaml'} "
            f"--memory-limit {int(died['peak_rss_gb'] * 0.9 * memory.GB / 2**20)}M"
        )
    state = ckpt.load_state(run_dir / "state" / "last.pt")
    ctx = prepare(config, run_dir=run_dir, device=device, epochs_done=_epochs_done(state), died=died)
    if "model" not in state:  # a state written before it carried its own copy of the weights
        last = run_dir / "weights" / "last.safetensors"
        tensors, _ = ckpt.read_checkpoint(last)
        ckpt.check_state_dict(last, tensors, ctx.model.state_dict())
        ctx.model.load_state_dict(tensors)
    if ctx.budget is not None:
        state = _adopt_schedule(ctx, state)
    restore(ctx, state)
    if dist.is_main():
        record(run_dir / "config.yaml", "memory_plan", ctx.memory_plan.to_dict())
    if ctx.budget is not None:
        _continue_budget(ctx, state, overrides or {})
    else:
        log.info("resuming %s after epoch %d of %d", run_dir, ctx.state.epoch, config.epochs)
    return ctx


def _adopt_schedule(ctx: RunContext, state: dict[str, Any]) -> dict[str, Any]:
    """A run started without ``--time`` and resumed with one: its cosine goes on as a fitted one, from its epoch."""
    saved = state.get("scheduler")
    if not isinstance(ctx.scheduler, torch.optim.lr_scheduler.LambdaLR) or not saved or "lr_lambdas" in saved:
        return state
    fitted = ctx.scheduler.state_dict()
    fitted["last_epoch"] = fitted["_step_count"] = _epochs_done(state)
    return {**state, "scheduler": fitted}


def _continue_budget(ctx: RunContext, state: dict[str, Any], overrides: dict[str, Any]) -> None:
    """The budget of a resumed ``--time`` run: the one it started with, less the time its state records as spent;
    a ``--time`` given to the resume is the time still to spend. (States from before ``--time``: nothing spent.)"""
    budget, done = ctx.budget, ctx.state.epoch
    assert budget is not None
    budget.spent_before = float(state.get("time_spent") or 0.0)
    if "time" in overrides:
        budget.seconds = budget.spent_before + parse_duration(overrides["time"])
    elif state.get("time_budget"):
        budget.seconds = float(state["time_budget"])
    budget.planned = max(done, int(state.get("time_planned") or 0))
    log.info("resuming %s after epoch %d: %s of its --time %s spent, %s left", ctx.run_dir, done,
             format_seconds(budget.spent_before), format_seconds(budget.seconds),
             format_seconds(max(0.0, budget.left())))  # fmt: skip


def record(path: Path, key: str, value: Any) -> None:
    """config.yaml's ``key`` (an output field: ``memory_plan``, ``time_plan``) becomes ``value``; the settings the
    run was started with stay as written."""
    import yaml

    from sedensenet.fileio import atomic_write_text

    saved = load_yaml(path)
    if saved.get(key) != value:
        atomic_write_text(path, yaml.safe_dump({**saved, key: value}, sort_keys=False, allow_unicode=True))


def _epochs_done(state: dict[str, Any]) -> int:
    """The completed epochs a resume state records; 0 when unreadable (:func:`restore` then names the problem)."""
    try:
        return max(0, int(state["epoch"]))
    except (KeyError, TypeError, ValueError):
        return 0


def finish(ctx: RunContext) -> dict[str, Any]:
    """Evaluate the best weights on val (and test) and write the reports (rank 0); returns the metrics.

    Outputs come from the path ``predict`` takes by default (its backend and ``--amp auto`` precision), with
    ``config.tta``'s views when asked. The temperature and the threshold are chosen on validation, stored in
    ``best.safetensors``, and applied unchanged to test; metrics.json says which TTA and precision it was.
    """
    if not dist.is_main():
        return {}
    from sedensenet.engine.predictor import Predictor

    best = ctx.run_dir / "weights" / "best.safetensors"
    meta = ctx.meta
    if best.is_file():
        tensors, meta = ckpt.read_checkpoint(best)
        ckpt.check_state_dict(best, tensors, ctx.model.state_dict())
        ctx.model.load_state_dict(tensors)
    c = ctx.config
    predictor = Predictor(ctx.model, meta, InferenceSettings(tta=c.tta), device=ctx.settings.device)
    outputs, inference = {}, ""
    for split, samples in (("val", ctx.splits.val), ("test", ctx.splits.test)):
        if samples:
            res = outputs[split] = predictor.run_samples(samples, c.batch_size)
            res.loss = weighted_loss(ctx.criterion, res.targets, res.losses)
            # what validation's outputs came from (predict warns when it runs with another TTA)
            precision = precision_name(predictor.amp_dtype)
            inference = inference or f"{predictor.backend_used} {precision}" + (
                f", TTA {c.tta}" if c.tta != "none" else ""
            )
    val = outputs.get("val")
    decision = fit_decision(
        meta, None if val is None else val.targets, None if val is None else val.probs,
        threshold=c.threshold, positive=c.positive, calibrate=c.calibrate, inference=inference,
    )  # fmt: skip
    if best.is_file():
        ckpt.update_meta(best, meta)
    results: dict[str, Any] = {}
    for split, res in outputs.items():
        samples = ctx.splits.val if split == "val" else ctx.splits.test
        out = ctx.run_dir if split == "val" else ctx.run_dir / "test"
        extra = {"split": split, "label": split_label(split, "test" in outputs), "best_epoch": ctx.state.best_epoch,
                 "epochs_run": ctx.state.epoch, "decision": decision, "tta": c.tta,
                 "precision": precision_name(predictor.amp_dtype)}  # fmt: skip
        if meta.multilabel:
            report = write_label_evaluation(out, res, ctx.splits.classes, samples, extra, meta=meta, seed=c.seed)
        else:
            report = write_evaluation(out, res, ctx.splits.classes, samples, c.in_chans, extra, meta=meta,
                                      seed=c.seed)  # fmt: skip
        results[split] = {**report.to_dict(), "label": extra["label"], "decision": decision}
    record_evaluation(best, meta, results)  # the figures travel with the checkpoint (served model card)
    return results


def is_multilabel(splits: DataSplits) -> bool:
    """Whether ``splits`` is a multi-label set (its samples carry one 0/1/NaN entry per label)."""
    return splits.task == "multi"


def split_label(split: str, has_test: bool) -> str:
    """What a split's figures may be trusted for: validation also picked the epoch, threshold and temperature."""
    if split == "test":
        return "test (evaluated once, with what validation chose)"
    return "validation (used for selection)" if has_test else "validation (used for selection: optimistic)"
