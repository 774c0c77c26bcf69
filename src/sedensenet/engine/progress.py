"""What a person sees while training: a per-epoch progress bar and, for the Python API, Keras-shaped epoch lines.

The bar is ``tqdm``'s: a widget in Jupyter (when ipywidgets is installed), text on a terminal, nothing in a
log file. The epoch lines go to ``sys.stdout`` as Keras' ``fit(verbose=...)`` writes them; the library never
configures the root logger for this.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import torch

from sedensenet.columns import METRICS

log = logging.getLogger(__name__)

VERBOSE_LEVELS = (0, 1, 2)
"""``0`` silent, ``1`` a live bar per epoch and one line per epoch, ``2`` one line per epoch (as Keras' ``fit``)."""


def in_notebook() -> bool:
    """True inside a Jupyter kernel (the test tqdm.auto uses), where stderr is not a terminal but a bar renders."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _new_bar(total: int, desc: str) -> Any:
    """tqdm's notebook widget in Jupyter, its text bar elsewhere (also in Jupyter when ipywidgets is missing)."""
    if in_notebook():
        from tqdm import notebook

        if notebook.IProgress is not None:  # None: ipywidgets is missing, and tqdm.notebook would raise
            return notebook.tqdm(total=total, desc=desc, leave=False, unit="batch")
        log.warning("no progress widget without ipywidgets: pip install 'sedensenet[notebook]'")
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True, file=sys.stderr)


class EpochProgress:
    """tqdm bar over one epoch's batches; a no-op when disabled, or outside Jupyter when stderr is no terminal."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.bar = None
        self.loss = 0.0
        self.correct = 0
        self.seen = 0
        self.start = time.perf_counter()
        if enabled and (in_notebook() or sys.stderr.isatty()):
            self.bar = _new_bar(total, desc)

    def update(self, n: int, loss: torch.Tensor | None, correct: torch.Tensor | None) -> None:
        if self.bar is None:
            return
        self.seen += n
        if loss is not None:
            self.loss += float(loss.detach()) * n
            self.correct += float(correct)
        rate = self.seen / max(time.perf_counter() - self.start, 1e-9)
        postfix = {"img/s": f"{rate:.0f}"}
        if loss is not None:
            postfix = {"loss": f"{self.loss / self.seen:.4f}", "acc": f"{self.correct / self.seen:.3f}", **postfix}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainProgress:
    """The training loop's reporter: makes each epoch's bar and writes each epoch's line, as ``verbose`` asks.

    ``bar`` shows the bar even at ``verbose=0`` (the CLI's mode: it writes its own log lines). On ranks other
    than the first of a distributed run, pass ``verbose=0, bar=False``.
    """

    def __init__(self, verbose: int = 0, bar: bool = False) -> None:
        if verbose not in VERBOSE_LEVELS or isinstance(verbose, float):
            raise ValueError(f"verbose={verbose!r}: use 0 (silent), 1 (progress bar and a line per epoch) or 2 "
                             "(a line per epoch)")  # fmt: skip
        self.verbose = int(verbose)
        self.show_bar = bar or self.verbose == 1

    def epoch_bar(self, total: int, epoch: int, epochs: int) -> EpochProgress:
        return EpochProgress(total, f"epoch {epoch}/{epochs}", enabled=self.show_bar)

    def epoch_end(self, epoch: int, epochs: int, row: dict[str, float], steps: int, best: bool = False) -> None:
        """Write ``Epoch 3/10 - 5/5 - 2.1s - loss: 0.6931 - accuracy: 0.5000 - val_loss: … - val_accuracy: …``."""
        if self.verbose:
            self.write(epoch_line(epoch, epochs, row, steps, best))

    def write(self, line: str) -> None:
        """One line on ``sys.stdout`` (looked up now, so Jupyter's and pytest's replacements receive it)."""
        if self.verbose:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def epoch_line(epoch: int, epochs: int, row: dict[str, float], steps: int, best: bool = False) -> str:
    """Keras' per-epoch summary; metrics not measured this epoch (NaN, e.g. no validation split) are left out."""
    parts = [f"Epoch {epoch}/{epochs}", f"{steps}/{steps}", f"{row['seconds']:.1f}s"]
    for col in METRICS:
        value = row.get(col.name, math.nan)
        if not math.isnan(value):
            parts.append(f"{col.name}: {value:{col.fmt}}")
    return " - ".join(parts) + (" - best" if best else "")
