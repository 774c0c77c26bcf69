"""Issue 14's evidence: training in a child process that a watchdog SIGKILLs (as the kernel's OOM killer would) the
moment its resident memory passes the limit given to ``--memory-efficient auto`` through SEDENSENET_MEMORY_LIMIT.

DenseNet-121 at 128 px, batch 32 peaks near 2.4 GB on the default path and 1.3 GB on the memory-efficient one
(benchmarks/results/memory.json): a limit between them must take the memory-efficient path and finish; a limit
below both must stop before training and say which batch and ``--accumulate`` fit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import make_folder  # noqa: E402

from sedensenet.config import parse_size  # noqa: E402

SETTINGS = ["--model", "keras_se_densenet121", "--image-size", "128", "--batch-size", "32", "--epochs", "1",
            "--max-steps", "1", "--workers", "0", "-q"]  # fmt: skip


def run_watched(args: list[str], limit: str, cwd: Path) -> tuple[int, bool, int, str]:
    """Run ``sedensenet ARGS`` with the limit; SIGKILL it when its RSS passes it. (code, killed, peak, stderr)."""
    env = {**os.environ, "SEDENSENET_MEMORY_LIMIT": limit}
    stderr = cwd / "stderr.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sedensenet", "train", *args], env=env, cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        killed, peak, cap = False, 0, parse_size(limit)
        while proc.poll() is None:
            rss = _rss(proc.pid)
            peak = max(peak, rss)
            if rss > cap:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
        code = proc.wait()
    return code, killed, peak, stderr.read_text(encoding="utf-8")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("watchdog") / "data", per_class=30)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_a_limit_between_the_paths_takes_the_memory_efficient_one_and_finishes(data: Path, tmp_path: Path) -> None:
    args = ["--data", str(data), "--project", str(tmp_path / "runs"), *SETTINGS]
    code, killed, peak, err = run_watched(args, "1.9G", tmp_path)
    assert not killed, f"killed at {peak / 1e9:.2f} GB: the plan did not keep under the limit"
    assert code == 0, err
    config = yaml.safe_load((tmp_path / "runs" / "train" / "config.yaml").read_text(encoding="utf-8"))
    plan = config["memory_plan"]
    assert plan["memory_efficient"] is True and config["memory_efficient"] == "auto"
    assert plan["budget_source"] == "SEDENSENET_MEMORY_LIMIT=1.9G"
    assert plan["efficient_gb"] * 1.15 <= plan["budget_gb"] < plan["default_gb"] * 1.15
    assert (tmp_path / "runs" / "train" / "weights" / "last.safetensors").is_file()
    assert not (tmp_path / "runs" / "train" / "state" / "running.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_a_limit_below_both_paths_stops_before_training_with_the_batch_that_fits(data: Path, tmp_path: Path) -> None:
    args = ["--data", str(data), "--project", str(tmp_path / "runs"), *SETTINGS]
    # 1.5G: the memory-efficient path's whole-run estimate at batch 32 (1.7 GB, plus the margin) does not fit,
    # batch 8 does: the advice keeps the effective batch of 32.
    code, killed, peak, err = run_watched(args, "1.5G", tmp_path)
    assert not killed, f"killed at {peak / 1e9:.2f} GB"
    assert code == 2, err
    assert "not enough memory to train keras_se_densenet121 at 128 px, batch 32" in err
    assert "--memory-efficient on --batch-size 8 --accumulate 4" in err
    assert not (tmp_path / "runs").exists()  # stopped before the run folder, let alone a step
