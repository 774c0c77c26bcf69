"""One pass over a loader, for training or evaluation; returns losses, accuracy and (for evaluation) outputs.

A batch's labels say the task: class indices (int) for a single-label run, a float (B, K) matrix of 0/1 with NaN
where a label is ignored for a multi-label one (:class:`MaskedBCEWithLogits`, sigmoid outputs).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sedensenet.data import normalize_batch
from sedensenet.errors import UserError
from sedensenet.models import fast
from sedensenet.reports.multilabel import binary_accuracy, epoch_scores


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or Inf."""


@dataclass
class EpochResult:
    """Mean loss and accuracy of one pass; ``probs``/``targets`` are kept for evaluation passes."""

    loss: float
    accuracy: float
    samples: int
    seconds: float
    probs: np.ndarray | None = None
    targets: np.ndarray | None = None
    losses: np.ndarray | None = field(default=None, repr=False)
    """Per-sample loss (evaluation only), for the top-losses report."""
    balanced_accuracy: float = math.nan
    """Evaluation only: mean recall over classes (multi-label: mean of each label's (sensitivity + specificity) / 2
    at 0.5); filled in by :func:`score_epoch`, as are ``auc`` and ``mAP``."""
    auc: float = math.nan
    """Macro AUROC: one-vs-rest over classes (two classes: the AUROC of the second), or over labels."""
    mAP: float = math.nan  # noqa: N815 - the column's name in history.csv
    """Mean average precision over classes (one-vs-rest) or labels."""

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@dataclass
class StepSettings:
    """How a batch runs: device, precision, memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    mean: torch.Tensor | None = None
    """Per-channel mean/std for batches that arrive as uint8 (the decoded-image cache's); on ``device``."""
    std: torch.Tensor | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch on the device, normalised if it came as uint8, in channels_last when asked (a one-channel
        batch too, whose ``.contiguous(memory_format=channels_last)`` would keep NCHW strides)."""
        non_blocking = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=non_blocking)
        if images.dtype == torch.uint8:
            if self.mean is None or self.std is None:
                raise ValueError("uint8 batches need StepSettings.mean and .std to be normalised")
            images = normalize_batch(images, self.mean, self.std)
        images = fast.channels_last(images) if self.channels_last else images.contiguous()
        return images, labels.to(self.device, non_blocking=non_blocking)


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    progress: object | None = None,
    epoch: int = 0,
    accumulate: int = 1,
    max_steps: int = 0,
) -> EpochResult:
    """Train ``model`` for one pass over ``loader``; raise NonFiniteLossError naming the step on NaN/Inf loss.

    The caller puts the model in training mode (so it can keep frozen BatchNorm layers in eval mode).
    ``progress`` is an optional callable ``(batch_images, loss, correct)`` called after each batch; a true return
    value ends the pass after that batch.
    ``accumulate``: one optimiser step every that many batches, on the mean of their gradients (a last, shorter
    group is averaged over its own batches); BatchNorm still sees each batch alone. ``max_steps`` > 0 ends the
    pass after that many batches (tests, smoke runs).
    """
    total_loss = torch.zeros((), dtype=torch.float64, device=settings.device)
    correct = torch.zeros((), dtype=torch.float64, device=settings.device)
    seen = 0
    start = time.perf_counter()
    batches = min(len(loader), max_steps) if max_steps else len(loader)
    for step, (images, labels) in enumerate(loader, start=1):
        if step > batches:
            break
        images, labels = settings.to_device(images, labels)
        first = (step - 1) % accumulate == 0
        group = min(accumulate, batches - (step - 1) // accumulate * accumulate)
        last = (step - 1) % accumulate == group - 1
        with settings.autocast(), _no_sync(model, last):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the training loss became {loss.item()} at epoch {epoch}, step {step}")
        if first:
            optimizer.zero_grad(set_to_none=True)
        with _no_sync(model, last):
            _backward(loss / group if group > 1 else loss, scaler)
        if last:
            _optimizer_step(model, optimizer, scaler, grad_clip)
        n = labels.shape[0]
        seen += n
        total_loss += loss.detach().double() * n
        batch_correct = _correct(logits.detach(), labels)
        correct += batch_correct
        if progress is not None and progress(n, loss, batch_correct):
            break  # the caller ends the pass here (a --time budget): what was trained so far is the result
    seconds = time.perf_counter() - start
    return EpochResult(_mean(total_loss, seen), _mean(correct, seen), seen, seconds)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Right answers in a batch: samples whose argmax is the class, or (multi-label) each sample's share of its
    unmasked labels right at probability 0.5 (Keras' binary accuracy), summed over the batch."""
    if not labels.is_floating_point():
        return (logits.argmax(1) == labels).sum()
    known = ~labels.isnan()
    right = ((logits > 0) == (labels > 0.5)) & known
    return (right.sum(1).double() / known.sum(1).clamp(min=1)).sum()


def _no_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's gradient all-reduce only on the last batch of an accumulation group."""
    if last or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()


def _optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, grad_clip: float
) -> None:
    """Unscale (fp16), clip, step."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    settings: StepSettings,
    progress: object | None = None,
    *,
    multilabel: bool | None = None,
) -> EpochResult:
    """Run ``model`` over ``loader`` in eval mode; keep class probabilities, targets and per-sample losses.

    ``multilabel``: sigmoid outputs (None: when the labels are float, as a multi-label set's are)."""
    model.eval()
    probs, targets, losses = [], [], []
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = settings.to_device(images, labels)
        with settings.autocast():
            logits = model(images).float()
        multi = labels.is_floating_point() if multilabel is None else multilabel
        if multi and not labels.is_floating_point():  # unlabelled files (predict): every label unknown
            labels = torch.full(logits.shape, math.nan, device=logits.device)
        losses.append(per_sample_loss(criterion, logits, labels).cpu())
        probs.append(probabilities(logits, multilabel=multi).cpu())
        targets.append(labels.cpu())
        if progress is not None:
            progress(labels.shape[0], None, None)
    seconds = time.perf_counter() - start
    if not probs:
        return EpochResult(math.nan, math.nan, 0, seconds, np.zeros((0, 0)), np.zeros(0, dtype=np.int64))
    p = torch.cat(probs).numpy()
    t = torch.cat(targets).numpy()
    per_sample = torch.cat(losses).numpy()
    weighted = weighted_loss(criterion, t, per_sample)
    return EpochResult(weighted, accuracy_of(p, t), len(t), seconds, p, t, per_sample)


def score_epoch(result: EpochResult) -> EpochResult:
    """``result`` (an evaluation pass) with its balanced accuracy, macro AUROC and mAP filled in from its outputs."""
    if result.probs is None or result.targets is None or not len(result.targets):
        return result
    task = "multi" if np.issubdtype(result.targets.dtype, np.floating) else "single"
    scores = epoch_scores(result.targets, result.probs, task)
    result.balanced_accuracy = scores["val_balanced_accuracy"]
    result.auc, result.mAP = scores["val_auc"], scores["val_mAP"]
    return result


def accuracy_of(probs: np.ndarray, targets: np.ndarray) -> float:
    """Share of samples whose argmax is their class; multi-label (float targets): share of unmasked label entries
    right at 0.5."""
    if not len(targets):
        return math.nan
    if not np.issubdtype(targets.dtype, np.floating):
        return float((probs.argmax(1) == targets).mean())
    return binary_accuracy(targets, probs)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, K)`` from logits ``(B, K)``: the one conversion every inference path uses."""
    return logits.float().softmax(1)


def probabilities(logits: torch.Tensor, *, multilabel: bool) -> torch.Tensor:
    """Softmax over classes, or (multi-label) one sigmoid per label."""
    return logits.float().sigmoid() if multilabel else class_probabilities(logits)


class MaskedBCEWithLogits(nn.Module):
    """Binary cross-entropy over every label, NaN targets (ignored labels) masked out of the loss.

    The mean is over the unmasked entries of the batch, so an ignored label neither pulls its logit nor dilutes the
    others. ``pos_weight`` (one per label) scales the positive term, as ``nn.BCEWithLogitsLoss`` does;
    ``label_smoothing`` moves each target towards 0.5 by that share (a 1 becomes ``1 - s/2``, a 0 ``s/2``).
    """

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.label_smoothing = label_smoothing

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of each entry (0 where masked) and the mask of known entries."""
        known = ~targets.isnan()
        target = targets.nan_to_num(0.0)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits.float(), target, pos_weight=self.pos_weight, reduction="none"
        )
        return loss * known, known

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss, known = self.elementwise(logits, targets)
        return loss.sum() / known.sum().clamp(min=1)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each sample's mean over its unmasked labels (0 for a sample with none)."""
        loss, known = self.elementwise(logits, targets)
        return loss.sum(1) / known.sum(1).clamp(min=1)


def per_sample_loss(criterion: nn.Module | None, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sample's loss: the masked binary cross-entropy of a multi-label run, else plain cross-entropy (the
    class weights enter :func:`weighted_loss`)."""
    if labels.is_floating_point():
        return (criterion if isinstance(criterion, MaskedBCEWithLogits) else MaskedBCEWithLogits()).per_sample(
            logits, labels
        )
    return nn.functional.cross_entropy(logits, labels, reduction="none")


def weighted_loss(criterion: nn.Module | None, targets: np.ndarray, per_sample: np.ndarray) -> float:
    """Validation loss with the training criterion's class weights (as Keras reports ``val_loss``).

    The one definition of ``val_loss``: one process and the gathered outputs of several give the same number.
    """
    weight = getattr(criterion, "weight", None)
    if weight is None:
        return float(per_sample.mean()) if len(per_sample) else math.nan
    w = weight.detach().cpu().double()[torch.as_tensor(targets, dtype=torch.long)]
    return float((torch.from_numpy(per_sample).double() * w).sum() / w.sum())


def _mean(total: torch.Tensor, count: int) -> float:
    return float(total.item()) / count if count else math.nan
