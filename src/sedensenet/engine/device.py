"""Where and how a run computes: device choice, mixed precision and memory format, seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from sedensenet.config import TrainConfig
from sedensenet.engine.loop import StepSettings
from sedensenet.errors import DeviceError


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:  # torch names the valid device types
        raise DeviceError(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {name}: Apple MPS is not available here")
    return device


def step_settings(config: TrainConfig, device: torch.device) -> tuple[StepSettings, torch.amp.GradScaler | None]:
    """Mixed precision and memory format for ``device``: AMP and channels_last only on GPUs."""
    amp = config.amp
    if amp == "auto":
        amp = "off" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return StepSettings(device, dtype, channels_last=config.channels_last and device.type == "cuda"), scaler


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
