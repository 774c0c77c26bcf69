"""``--sync-bn`` with ``--memory-efficient``: the fast paths step aside, so SyncBatchNorm's statistics are global."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("sync_bn_worker.py")
TEARDOWN_ABORT = "terminate called without an active exception"


def test_sync_batchnorm_statistics_are_global_with_memory_efficient_fast_paths(tmp_path: Path) -> None:
    out = tmp_path / "running.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
           str(WORKER), str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and TEARDOWN_ABORT in proc.stderr:
        # gloo's C++ threads now and then abort a loaded CI machine's process (std::terminate, no Python
        # exception, nothing of ours on the stack); one more try tells that apart from a real failure.
        out.unlink(missing_ok=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    rank0, rank1, whole = result["ranks"][0], result["ranks"][1], result["global"]
    # Stem, dense layers (norm1 and norm2) and transition: every BatchNorm the fast paths would otherwise take.
    assert {"features.norm0", "features.denseblock1.denselayer2.norm1", "features.transition1.norm"} <= set(rank0)
    assert set(rank0) == set(rank1) == set(whole)
    for name in whole:
        for i, stat in enumerate(("running_mean", "running_var")):
            assert rank0[name][i] == pytest.approx(rank1[name][i], abs=1e-6), (name, stat)
            assert rank0[name][i] == pytest.approx(whole[name][i], abs=1e-5, rel=1e-4), (name, stat)
    # The ranks' inputs have different means, so local statistics would have told them apart.
    assert abs(whole["features.norm0"][0][0]) > 1e-3
