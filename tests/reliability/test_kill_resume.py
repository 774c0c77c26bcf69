"""SIGKILL at random moments, inside checkpoint writes too: every file left behind loads, and ``--resume`` ends
the run with the same weights, bit for bit, as a run never interrupted (CPU, same seed).

The kills are planned from a fixed seed. Most wait for the temporary file of a chosen write to appear
(``weights/last.safetensors``, ``history.csv``, ``curves.png``, ``state/last.pt``) and kill at once, so they land
inside that write; a new temporary file left behind proves it. The others kill a seeded time after the process
started (start-up: scanning, building, resuming) or after its first write (training, validation, writing).
No hook in the library is needed. ``SEDENSENET_KILL_TRIALS`` raises the number of kills (default 6).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from relkit import FAST, check_run_folder, cli_args, make_folder, same_weights, start_cli, temporaries

import sedensenet
from sedensenet.cli import main
from sedensenet.reports.run import read_history_csv

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
SEED = 20240607
TRIALS = int(os.environ.get("SEDENSENET_KILL_TRIALS", "6"))
EPOCHS = 6 + 2 * TRIALS  # each kill costs at most a couple of epochs of progress: the run never ends early
TARGETS = ("last.safetensors", "history.csv", "curves.png", "last.pt")
SETTINGS = dict(FAST, epochs=EPOCHS, drop_rate=0.1, scheduler="cosine")

log = logging.getLogger(__name__)


@dataclass
class Kill:
    """When to kill: at the ``nth`` new temporary file of ``target`` (any file when ``target`` is ``""``),
    then ``delay`` seconds later; ``nth=0`` counts the delay from the start of the process."""

    target: str = ""
    nth: int = 1
    delay: float = 0.0

    def __str__(self) -> str:
        if self.target:
            return f"inside write #{self.nth} of {self.target}"
        return f"{self.delay:.2f}s after " + ("the start" if not self.nth else "the first write")


def plan(rng: random.Random, trials: int) -> list[Kill]:
    targeted = max(min(len(TARGETS), trials), trials // 2)
    kills = [Kill(TARGETS[i % len(TARGETS)], nth=rng.randint(1, 2)) for i in range(targeted)]
    kills += [Kill(nth=i % 2, delay=rng.uniform(0.5, 4.0) if i % 2 == 0 else rng.uniform(0.0, 1.5))
              for i in range(trials - targeted)]  # fmt: skip
    rng.shuffle(kills)
    return kills


def new_temporaries(run_dir: Path, target: str, seen: set[str]) -> int:
    """Count temporary files of ``target`` not seen before (each write gets a fresh random name)."""
    for folder in (run_dir, run_dir / "weights", run_dir / "state"):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        seen.update(n for n in names if n.startswith(f".{target}") and n.endswith(".tmp"))
    return len(seen)


def run_and_kill(args: list[str], cwd: Path, run_dir: Path, kill: Kill) -> tuple[bool, list[Path]]:
    """Start the CLI and SIGKILL it as planned. Returns whether it was killed (not finished first) and the
    temporary files this kill left behind (proof that it landed inside a write)."""
    before = set(temporaries(run_dir))  # left by an earlier kill: not this run's writes
    seen = {p.name for p in before}
    with open(cwd / "child.log", "w", encoding="utf-8") as out:
        proc = start_cli(args, cwd, stdout=out, stderr=subprocess.STDOUT)
        start, armed = time.monotonic(), kill.nth == 0
        try:
            while proc.poll() is None:
                if not armed and new_temporaries(run_dir, kill.target, seen) >= len(before) + kill.nth:
                    start, armed = time.monotonic(), True
                if armed and time.monotonic() - start >= kill.delay:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.0005)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode == -signal.SIGKILL, [p for p in temporaries(run_dir) if p not in before]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The data folder and an uninterrupted run of the same settings (in this process: same thread count)."""
    root = tmp_path_factory.mktemp("kill")
    data = make_folder(root / "data 数据", per_class=10)
    result = sedensenet.train(data=str(data), project=str(root / "runs"), name="reference", **SETTINGS)
    return data, result.run_dir


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_same_weights(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    data, ref = reference
    project = tmp_path / "runs"
    run = project / "killed"
    fresh = ["train", "--data", str(data), "--project", str(project), "--name", "killed", "--exist-ok", "-q"]
    fresh += cli_args(SETTINGS)
    killed = mid_write = 0
    for number, kill in enumerate(plan(random.Random(SEED), TRIALS), start=1):
        resumable = (run / "state" / "last.pt").is_file()
        args = ["train", "--resume", str(run), "-q"] if resumable else fresh
        was_killed, left = run_and_kill(args, tmp_path, run, kill)
        killed += was_killed
        mid_write += bool(left)
        seen = check_run_folder(run)  # every file left behind loads
        if seen["state_epoch"] is not None:  # the weights file is never behind the resume state
            assert seen["last_epoch"] in (seen["state_epoch"], seen["state_epoch"] + 1)
        log.info("kill %d %s: killed=%s, left %s, resume point epoch %s",
                 number, kill, was_killed, [p.name for p in left], seen["state_epoch"])  # fmt: skip
    assert killed >= TRIALS - 1, "the run finished before the planned kills"
    assert mid_write >= 2, "no kill landed inside a write"

    args = ["train", "--resume", str(run), "-q"] if (run / "state" / "last.pt").is_file() else fresh
    assert main(args) == 0
    assert not temporaries(run), "resume removes what interrupted writes left"
    check_run_folder(run)
    for name in ("last", "best"):
        assert same_weights(run / "weights" / f"{name}.safetensors", ref / "weights" / f"{name}.safetensors"), name
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in read_history_csv(run / "history.csv")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in read_history_csv(ref / "history.csv")]
