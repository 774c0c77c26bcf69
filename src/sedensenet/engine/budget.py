"""``--time``: how many epochs fit in what is left of the budget, re-planned after every epoch, and when a step
would overrun it. Pure arithmetic on an injected clock (tests drive it with a fake one); the epoch loop asks,
rank 0 decides and :mod:`~sedensenet.engine.distributed` tells the other ranks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FINAL_SECONDS = 3.0
"""The part of the final evaluation that does not grow with the images: reports, figures, bootstrap intervals
(about 1-2 s for a small run on 2 CPU cores), with room to spare."""
EXPORT_SECONDS = 15.0
"""Added to the final evaluation on a CPU when it has enough images for predict's ONNX Runtime path: exporting,
optimising and checking the graph (5-13 s for DenseNet-121)."""
FINAL_FACTOR = 1.5
"""The final evaluation's passes (predict's path, maybe with TTA) against one validation pass of the same images."""
RECENT = 3
"""Epochs whose mean duration predicts the next one."""


@dataclass
class TimeBudget:
    """A run's time budget: ``seconds`` in all, ``spent_before`` by earlier starts of the same run (resume),
    ``cap`` epochs at most (an explicit ``--epochs``; 0: no cap). ``planned``: the epochs the run will train."""

    seconds: float
    spent_before: float = 0.0
    cap: int = 0
    planned: int = 0
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=math.nan)
    """The clock when this start began (set by :meth:`start`)."""
    epoch_seconds: list[float] = field(default_factory=list)
    """This start's epochs: training, validation and the checkpoint writes."""
    val_seconds: float = math.nan
    """The last validation pass."""
    write_seconds: float = 1.0
    """The last epoch's checkpoint, history and curve writes (before the first: a guess)."""
    eval_images: tuple[int, int] = (0, 0)
    """Images of the validation pass and of the final evaluation (val + test)."""
    final_fixed: float = FINAL_SECONDS
    """The final evaluation's time that does not grow with the images (:data:`FINAL_SECONDS`, plus
    :data:`EXPORT_SECONDS` where predict's path exports the model)."""
    epoch_began: float = math.nan
    last_step: float = math.nan
    """The clock when the last step (or the epoch) began."""
    steps: int = 0
    """Steps of the current epoch so far."""
    epoch_steps: int = 0
    """Steps the current epoch has."""
    overran: bool = False
    """The current epoch's pass was ended because its next step would have overrun the budget."""

    def start(self) -> TimeBudget:
        self.started = self.clock()
        return self

    def elapsed(self) -> float:
        """Seconds spent by the run: earlier starts and this one so far."""
        return self.spent_before + self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def final_estimate(self, per_train_image: float = math.nan) -> float:
        """Seconds the final evaluation will take: from the last validation pass when there was one, else from
        the training pass's time per image (a forward pass is about a third of a training step)."""
        val_images, eval_images = self.eval_images
        if not math.isnan(self.val_seconds) and val_images:
            per_image = self.val_seconds / val_images
        else:
            per_image = per_train_image / 3 if not math.isnan(per_train_image) else 0.0
        return FINAL_FACTOR * per_image * eval_images + self.final_fixed

    def begin_epoch(self, steps: int) -> None:
        """An epoch of ``steps`` steps begins."""
        self.epoch_began = self.last_step = self.clock()
        self.steps, self.epoch_steps, self.overran = 0, steps, False

    def step_overruns(self, *, images_per_step: int) -> bool:
        """After a step of the current epoch: True when the next step, as long as this one, would end later than
        the last moment at which the epoch can still be validated, saved and the run evaluated within the budget
        (after the epoch's last step: when validation, the writes and the final evaluation would overrun it).
        The first step of a start (kernel selection, allocations: often many times a later one) only stops the
        run when the budget is already overrun."""
        now = self.clock()
        step, self.last_step = now - self.last_step, now
        self.steps += 1
        first = self.steps == 1 and not self.epoch_seconds
        per_image = step / max(1, images_per_step)
        val = self.val_seconds if not math.isnan(self.val_seconds) else per_image / 3 * self.eval_images[0]
        next_step = step if self.steps < self.epoch_steps else 0.0
        after = 0.0 if first else next_step + val + self.write_seconds + self.final_estimate(per_image)
        return self.spent_before + (now - self.started) + after > self.seconds

    def end_epoch(self, *, done: int, val_seconds: float) -> int:
        """Record the epoch just trained and validated (``done`` epochs complete, its validation pass
        ``val_seconds``; its writes to come estimated by the last ones) and re-plan: the epochs that fit in what is
        left after the final evaluation, never fewer than ``done``, at most ``cap``."""
        if not math.isnan(val_seconds):
            self.val_seconds = val_seconds
        self.epoch_seconds.append(self.clock() - self.epoch_began + self.write_seconds)
        self.planned = plan_epochs(done=done, left=self.left() - self.write_seconds, epoch_seconds=self.mean_epoch(),
                                   final_seconds=self.final_estimate(), cap=self.cap)  # fmt: skip
        return self.planned

    def wrote(self, seconds: float) -> None:
        """The epoch's writes took ``seconds``: the epoch's duration is corrected and the next estimate is this."""
        if self.epoch_seconds:
            self.epoch_seconds[-1] += seconds - self.write_seconds
        self.write_seconds = seconds

    def mean_epoch(self) -> float:
        """The duration the next epoch is planned with: the mean of this start's last few."""
        recent = self.epoch_seconds[-RECENT:]
        return sum(recent) / len(recent) if recent else math.nan

    def describe(self, done: int) -> str:
        """The plan as the log says it after each epoch."""
        cap = f", --epochs {self.cap} at most" if self.cap else ""
        spent, left = format_seconds(self.elapsed()), format_seconds(max(0.0, self.left()))
        per_epoch = f"{self.mean_epoch():.1f}s per epoch" if self.epoch_seconds else "no whole epoch measured"
        return (
            f"--time {format_seconds(self.seconds)}: {spent} spent, {left} left; {per_epoch}, "
            f"the final evaluation ~{self.final_estimate():.1f}s: {self.planned} epochs planned ({done} done{cap})"
        )


def plan_epochs(*, done: int, left: float, epoch_seconds: float, final_seconds: float, cap: int = 0) -> int:
    """The epoch count that ends within the budget: ``done`` plus the whole epochs of ``epoch_seconds`` that fit in
    the ``left`` seconds once ``final_seconds`` are set aside for the final evaluation; at most ``cap`` (0: none)."""
    room = left - final_seconds
    more = math.floor(room / epoch_seconds) if epoch_seconds > 0 and room > 0 else 0
    planned = done + max(0, more)
    return max(done, min(planned, cap) if cap else planned)


def format_seconds(seconds: float) -> str:
    """``45s``, ``12m30s``, ``2h05m``: a duration as people write it."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
