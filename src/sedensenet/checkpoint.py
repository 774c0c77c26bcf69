"""Checkpoints: weights as safetensors with JSON metadata; resume state via ``torch.load(weights_only=True)``.

A checkpoint alone is enough to predict: its metadata carries the architecture, the class names and
the preprocessing (image size, mean, std, channels).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sedensenet.fileio import atomic_write
from sedensenet.models.densenet import DenseNet, DenseNetConfig

FORMAT = "sedensenet-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "sedensenet"


class CheckpointError(ValueError):
    """A checkpoint or resume-state file that cannot be used; the message names the file and the problem."""


@dataclass
class CheckpointMeta:
    """Everything besides the weights that is needed to use a model on new images."""

    model: dict[str, Any]
    """The :class:`DenseNetConfig` as a dictionary."""
    classes: list[str]
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    resize: str = "squash"
    """How images are brought to ``image_size``: ``squash`` (resize both sides, as Keras does)."""
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def preset(self) -> str | None:
        return self.model.get("extra", {}).get("preset")

    @property
    def in_chans(self) -> int:
        return int(self.model.get("in_chans", 3))


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` (``.safetensors``) atomically."""
    from safetensors.torch import save_file

    model = _unwrap(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {_META_KEY: json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **asdict(meta)}, ensure_ascii=False)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a checkpoint's tensors and metadata, with errors that name the file and the problem."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (corrupt or truncated?): {e}") from None
    if raw is None:
        raise CheckpointError(
            f"{path} has no sedensenet metadata; for plain torchvision weights use create_model(..., pretrained=FILE)"
        )
    try:
        d = json.loads(raw)
        d.pop("format", None)
        version = d.pop("version", None)
        meta = CheckpointMeta(**d)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: its metadata is malformed ({e})") from None
    if version is not None and version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer sedensenet (format {version}); please upgrade")
    return tensors, meta


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[DenseNet, CheckpointMeta]:
    """Rebuild the model stored in ``path`` and load its weights; returns the model (eval mode) and metadata."""
    tensors, meta = read_checkpoint(path)
    try:
        config = DenseNetConfig.from_dict(dict(meta.model))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the stored model settings are invalid ({e})") from None
    model = DenseNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} {tensors[k].dtype} vs model {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in tensors and (tensors[k].shape != v.shape or tensors[k].dtype != v.dtype)
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not match the stored architecture: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape/dtype {wrong[:5]}"
        )
    model.load_state_dict(tensors)
    model.classes = list(meta.classes)  # type: ignore[attr-defined]
    model.meta = meta  # type: ignore[attr-defined]
    return model.to(map_location).eval(), meta


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write resume state (optimizer, scheduler, scaler, RNG, counters) atomically with ``torch.save``."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read resume state with ``weights_only=True``: only tensors and plain containers, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects that could run code when unpickled "
            f"({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable resume state (truncated or corrupt?): {e}") from None
