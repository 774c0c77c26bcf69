"""sedensenet: DenseNet and Squeeze-and-Excitation DenseNet image classifiers in PyTorch.

The public API: ``create_model``, ``list_models``, ``load_model``, ``summary``, ``train``, ``evaluate``,
``predict`` (how a model runs: ``InferenceSettings``), ``check_data``, ``plot_history``. Heavy parts (training,
data) are imported on first use so ``import sedensenet`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from sedensenet.models import DenseNet, DenseNetConfig, SqueezeExcite, create_model, list_models

__version__ = "0.1.0"

_LAZY = {
    "summary": "sedensenet.model_summary",
    "load_model": "sedensenet.api",
    "train": "sedensenet.api",
    "evaluate": "sedensenet.api",
    "predict": "sedensenet.api",
    "check_data": "sedensenet.api",
    "plot_history": "sedensenet.reports.plots",
    "TrainConfig": "sedensenet.config",
    "InferenceSettings": "sedensenet.config",
}

__all__ = [
    "DenseNet",
    "DenseNetConfig",
    "InferenceSettings",
    "SqueezeExcite",
    "TrainConfig",
    "__version__",
    "check_data",
    "create_model",
    "evaluate",
    "list_models",
    "load_model",
    "plot_history",
    "predict",
    "summary",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sedensenet' has no attribute {name!r}")
