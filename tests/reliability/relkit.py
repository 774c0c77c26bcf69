"""Helpers shared by the reliability tests: a fast run configuration, subprocess runs, and a loader for every
file a run folder can hold (the check that a killed or failed run left nothing half-written)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import make_folder  # noqa: E402

from sedensenet import checkpoint as ckpt  # noqa: E402
from sedensenet.config import TrainConfig  # noqa: E402
from sedensenet.fileio import TEMP_SUFFIX  # noqa: E402
from sedensenet.reports.run import read_history_csv  # noqa: E402

__all__ = ["FAST", "make_folder", "cli_args", "start_cli", "temporaries", "check_run_folder", "same_weights"]

FAST: dict[str, Any] = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 8, "augment": "light"}
FAST["workers"] = 0
"""A tiny model on 16x16 images: an epoch of 16 images takes milliseconds; the writes dominate."""


def cli_args(settings: dict[str, Any]) -> list[str]:
    """``{"batch_size": 8}`` -> ``["--batch-size", "8"]`` (booleans become ``--flag`` / ``--no-flag``)."""
    args: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def start_cli(args: list[str], cwd: Path, **popen: Any) -> subprocess.Popen:
    """``python -m sedensenet ARGS`` in a child process, one intra-op thread (as the in-process tests use)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.setdefault("SEDENSENET_HOME", str(Path(__file__).resolve().parents[1] / ".cache"))
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "sedensenet", *args], cwd=cwd, env=env, text=True, encoding="utf-8", **popen
    )


def temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes (``.<name>.<random>.tmp``) anywhere in the run folder."""
    return sorted(p for p in run_dir.rglob(f".*{TEMP_SUFFIX}") if p.is_file())


def check_run_folder(run_dir: Path) -> dict[str, Any]:
    """Load every file of a run folder the way its reader does; fail on any file that does not load.

    Temporary files of interrupted writes are skipped (they are not part of the run). Returns what was read:
    ``{"files": [...], "state_epoch": int | None, "last_epoch": int | None, "history_epochs": [...]}``.
    """
    out: dict[str, Any] = {"files": [], "state_epoch": None, "last_epoch": None, "history_epochs": []}
    tmp = set(temporaries(run_dir))
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and p not in tmp):
        rel = path.relative_to(run_dir).as_posix()
        out["files"].append(rel)
        if path.suffix == ".safetensors":
            model, meta = ckpt.load_checkpoint(path)
            assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()), rel
            if rel == "weights/last.safetensors":
                out["last_epoch"] = meta.epoch
        elif rel == "state/last.pt":
            state = ckpt.load_state(path)
            out["state_epoch"] = int(state["epoch"])
            assert [int(r["epoch"]) for r in state["history"]] == list(range(1, state["epoch"] + 1)), rel
        elif path.name == "config.yaml":
            TrainConfig.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=rel)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.name == "history.csv":
            out["history_epochs"] = [int(r["epoch"]) for r in read_history_csv(path)]
        elif path.suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                list(csv.reader(f))
        elif path.suffix == ".png":
            with Image.open(path) as im:
                im.load()
        else:  # train.log, classification_report.txt
            path.read_text(encoding="utf-8")
    return out


def same_weights(a: Path, b: Path) -> bool:
    """True when two checkpoints hold bit-identical tensors under the same names."""
    ta, _ = ckpt.read_checkpoint(a)
    tb, _ = ckpt.read_checkpoint(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
