"""Where and how a run computes: device choice, mixed precision and memory format, seeding."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from sedensenet.config import TrainConfig
from sedensenet.engine.loop import StepSettings
from sedensenet.errors import DeviceError
from sedensenet.models.cpu import SLOW_AVX512_BF16, cpu_id

log = logging.getLogger(__name__)


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


def cpu_bf16(*, training: bool = False) -> tuple[bool, str]:
    """Whether ``--amp auto`` runs bf16 on this CPU (for ``training``, else for inference): it has bf16 matrix
    units that PyTorch's oneDNN uses, and bf16 is the faster choice there; and why (for the log).

    oneDNN's own query (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is true on any AVX-512 x86 CPU, where
    bf16 without AVX512-BF16 or AMX is emulated and slower than float32; so on x86 the CPU must also report
    ``avx512_bf16`` or ``amx_bf16`` (``torch.cpu.get_capabilities``). On a CPU whose AVX512-BF16 is slower than
    its float32 (:func:`slow_avx512_bf16`) inference keeps float32, and training takes bf16: its convolutions
    compute in float32 there (:func:`sedensenet.models.fast_storage.float32_convolutions`), and the rest of the
    step gains from bf16's halved memory traffic. On Arm oneDNN's query already asks for the BF16 extension.
    ``SEDENSENET_CPU_BF16=0`` in the environment answers no, ``=1`` skips the speed rule.
    """
    if os.environ.get("SEDENSENET_CPU_BF16") == "0":  # e.g. runs that must match float32 ones on any CPU
        return False, "SEDENSENET_CPU_BF16=0"
    if not torch.backends.mkldnn.is_available():
        return False, "this PyTorch has no oneDNN"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "oneDNN reports no bf16 support on this CPU"
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        caps = {}
    if not str(caps.get("architecture", "")).startswith("x86"):
        return True, f"oneDNN bf16 on {caps.get('architecture') or 'this CPU'}"
    units = [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]
    if not units:
        return False, "no AVX512-BF16 or AMX-BF16 on this x86 CPU (oneDNN would emulate bf16, slower than fp32)"
    slow = None if caps.get("amx_bf16") or os.environ.get("SEDENSENET_CPU_BF16") == "1" else slow_avx512_bf16()
    if slow is None:
        return True, f"oneDNN uses this CPU's {' and '.join(units)}"
    if training:
        return True, (f"{slow} without AMX: bf16 training computes its convolutions in float32 there, at "
                      "0.98-1.58x float32 training's speed in two thirds of its memory (README.md)")  # fmt: skip
    return False, f"{slow} without AMX: its AVX512-BF16 runs DenseNet inference at 0.74-0.84x float32's speed"


def slow_avx512_bf16() -> str | None:
    """The name of this CPU when its AVX512-BF16 is slower than its float32 (:data:`SLOW_AVX512_BF16`), or None."""
    return SLOW_AVX512_BF16.get(cpu_id() or ("", -1, -1))


AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The autocast dtype of each concrete ``--amp`` value (``off``: float32, no autocast)."""


def amp_dtype(amp: str, device: torch.device, *, quiet: bool = False, training: bool = False) -> torch.dtype | None:
    """The autocast dtype ``--amp`` asks for on ``device``, for ``training`` or else inference; ``auto`` picks it
    and logs which and why (unless ``quiet``: a caller that only plans, such as the memory estimate, leaves the
    log line to the run).

    ``auto``: bf16 on CUDA GPUs that support it (else fp16), bf16 on CPUs with bf16 matrix units where it is the
    faster choice for the work (:func:`cpu_bf16`), float32 elsewhere. ``off`` is float32 everywhere.
    """
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"--amp {amp!r}: choose auto, off, bf16 or fp16")
    if amp == "auto":
        if device.type == "cuda":
            amp, why = ("bf16", "GPU supports bf16") if torch.cuda.is_bf16_supported() else ("fp16", "no bf16 on GPU")
        elif device.type == "cpu":
            ok, why = cpu_bf16(training=training)
            amp = "bf16" if ok else "off"
        else:
            amp, why = "off", f"no mixed precision by default on {device.type}"
        if not quiet:
            force = "--amp off forces float32" if amp != "off" else "--amp bf16 forces bf16"
            log.info("--amp auto: %s on %s (%s; %s)", "fp32" if amp == "off" else amp, device.type, why, force)
    return AMP_DTYPES[amp]


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: how a run computed, for metrics files and logs."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def step_settings(config: TrainConfig, device: torch.device) -> tuple[StepSettings, torch.amp.GradScaler | None]:
    """Mixed precision (see :func:`amp_dtype`) and memory format for ``device``: channels_last only on GPUs (on CPU
    the model's fast path runs channels_last itself)."""
    dtype = amp_dtype(config.amp, device, training=True)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return StepSettings(device, dtype, channels_last=config.channels_last and device.type == "cuda"), scaler


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
