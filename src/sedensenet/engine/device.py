"""Where and how a run computes: device choice, mixed precision and memory format, seeding."""

from __future__ import annotations

import functools
import logging
import os
import random
import time

import numpy as np
import torch
from torch import nn

from sedensenet.config import TrainConfig
from sedensenet.engine import distributed as dist
from sedensenet.engine.loop import StepSettings
from sedensenet.errors import DeviceError

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


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 matrix work on bf16 units that PyTorch's oneDNN uses, and why (for the log).

    oneDNN's own query (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is true on any AVX-512 x86 CPU, where
    bf16 without AVX512-BF16 or AMX is emulated and slower than float32; so on x86 the CPU must also report
    ``avx512_bf16`` or ``amx_bf16`` (``torch.cpu.get_capabilities``). On Arm oneDNN's query already asks for the
    BF16 extension. ``SEDENSENET_CPU_BF16=0`` in the environment answers no (float32 under ``--amp auto``).
    Having the units does not make bf16 faster: :func:`cpu_bf16_speedup` measures that.
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
    return True, f"oneDNN uses this CPU's {' and '.join(units)}"


BF16_MIN_SPEEDUP = 1.1
"""``--amp auto`` trains and predicts in bf16 on a CPU only when its probe step is at least this much faster
than float32's: bf16 costs precision, so near parity float32 wins."""


@functools.lru_cache(maxsize=8)
def cpu_bf16_speedup(threads: int | None = None) -> float:
    """How much faster one DenseNet layer's training step runs under bf16 autocast than in float32 on this CPU
    (float32 seconds / bf16 seconds; measured once per process and thread count, in under a second).

    Why measure: bf16 units do not make bf16 faster everywhere. On a Xeon with AVX512-BF16 and no AMX, oneDNN's
    bf16 convolutions ran at half its float32 ones' speed and a whole DenseNet-121 step at 0.85x (inference
    0.77x), while an EPYC with the same flag gains ~1.8x and AMX more (benchmarks/README.md, *Which precision
    --amp auto picks*). The probe is a layer of DenseNet-121's second block at 224 px (BN-ReLU-1x1 conv 256 to 128,
    BN-ReLU-3x3 conv to 32, 28x28, batch 16, channels_last), forward and backward, each precision's best of
    three interleaved runs after a warm-up, at the run's thread count.
    """
    threads = threads or torch.get_num_threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):  # the run's global generator stays where seeding put it
            torch.manual_seed(0)
            layer = nn.Sequential(
                nn.BatchNorm2d(256), nn.ReLU(), nn.Conv2d(256, 128, 1, bias=False),
                nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 32, 3, padding=1, bias=False),
            )  # fmt: skip
        x = torch.randn(16, 256, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)

        def step(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = layer(x.to(torch.bfloat16) if bf16 else x)
            y.float().sum().backward()
            return time.perf_counter() - start

        best = {False: float("inf"), True: float("inf")}
        for bf16 in best:
            step(bf16)  # oneDNN builds its kernels for the shapes on the first call
        for _ in range(3):
            for bf16 in best:
                best[bf16] = min(best[bf16], step(bf16))
        return best[False] / best[True]
    finally:
        torch.set_num_threads(saved)


def _cpu_amp_auto() -> tuple[str, str]:
    """``--amp auto`` on the CPU: bf16 where the CPU has bf16 units and the probe finds them faster
    (``SEDENSENET_CPU_BF16=1``: the units alone decide, no probe), else float32; with the reason for the log."""
    ok, why = cpu_bf16()
    if not ok:
        return "off", why
    if os.environ.get("SEDENSENET_CPU_BF16") == "1":
        return "bf16", f"{why}; SEDENSENET_CPU_BF16=1, not measured"
    speedup = cpu_bf16_speedup()
    verdict = "faster" if speedup >= BF16_MIN_SPEEDUP else f"under {BF16_MIN_SPEEDUP}x, not worth bf16's precision"
    measured = f"a DenseNet layer's training step ran {speedup:.2f}x float32's speed in bf16: {verdict}"
    return ("bf16" if speedup >= BF16_MIN_SPEEDUP else "off"), f"{why}; {measured}"


def amp_dtype(amp: str, device: torch.device, *, quiet: bool = False) -> torch.dtype | None:
    """The autocast dtype ``--amp`` asks for on ``device``; ``auto`` picks it and logs which and why (unless
    ``quiet``: a caller that only plans, such as the memory estimate, leaves the log line to the run).

    ``auto``: bf16 on CUDA GPUs that support it (else fp16); on a CPU bf16 where it has bf16 matrix units
    (:func:`cpu_bf16`) and they run DenseNet faster than float32 (:func:`cpu_bf16_speedup`, measured once per
    process), float32 elsewhere. ``off`` is float32 everywhere.
    """
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"--amp {amp!r}: choose auto, off, bf16 or fp16")
    if amp == "auto":
        if device.type == "cuda":
            amp, why = ("bf16", "GPU supports bf16") if torch.cuda.is_bf16_supported() else ("fp16", "no bf16 on GPU")
        elif device.type == "cpu":
            amp, why = _cpu_amp_auto()
        else:
            amp, why = "off", f"no mixed precision by default on {device.type}"
        if not quiet:
            force = "--amp off forces float32" if amp != "off" else "--amp bf16 forces bf16"
            log.info("--amp auto: %s on %s (%s; %s)", "fp32" if amp == "off" else amp, device.type, why, force)
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


_AMP_DTYPES = (None, torch.bfloat16, torch.float16)


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: how a run computed, for metrics files and logs."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def step_settings(config: TrainConfig, device: torch.device) -> tuple[StepSettings, torch.amp.GradScaler | None]:
    """Mixed precision (see :func:`amp_dtype`) and memory format for ``device``: channels_last only on GPUs (on CPU
    the model's fast path runs channels_last itself)."""
    dtype = amp_dtype(config.amp, device)
    if config.amp == "auto":  # a measured choice: every process takes rank 0's, as they take its memory plan
        dtype = _AMP_DTYPES[dist.rank0_decides(_AMP_DTYPES.index(dtype), device)]
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return StepSettings(device, dtype, channels_last=config.channels_last and device.type == "cuda"), scaler


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
