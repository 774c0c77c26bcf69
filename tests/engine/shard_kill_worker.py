"""A torchrun worker for the resume test: ``sedensenet <argv>``, except that rank 1 kills itself (SIGKILL, as the
OOM killer or a lost machine would) instead of predicting, once rank 0's part is on disk."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from sedensenet.cli import main
from sedensenet.engine import predictor


def _die(*args: object, **kwargs: object) -> None:
    output = Path(sys.argv[sys.argv.index("--output") + 1])
    part = output.with_name(output.name + ".parts") / "part-00000-of-00002.csv"
    deadline = time.monotonic() + 120
    while not part.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        predictor.Predictor.predict_files = _die  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
