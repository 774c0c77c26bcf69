"""A per-epoch progress bar (loss, accuracy, images/s, ETA) that stays quiet in non-interactive logs."""

from __future__ import annotations

import sys
import time

import torch


class EpochProgress:
    """tqdm bar over one epoch's batches; a no-op when disabled or when stderr is not a terminal."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.bar = None
        self.loss = 0.0
        self.correct = 0
        self.seen = 0
        self.start = time.perf_counter()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True)

    def update(self, n: int, loss: torch.Tensor | None, correct: torch.Tensor | None) -> None:
        if self.bar is None:
            return
        self.seen += n
        if loss is not None:
            self.loss += float(loss) * n
            self.correct += int(correct)
        rate = self.seen / max(time.perf_counter() - self.start, 1e-9)
        postfix = {"img/s": f"{rate:.0f}"}
        if loss is not None:
            postfix = {"loss": f"{self.loss / self.seen:.4f}", "acc": f"{self.correct / self.seen:.3f}", **postfix}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
