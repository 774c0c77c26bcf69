"""What this CPU is and whether its bf16 matrix units are slower than its float32 ones.

Two places ask: ``--amp auto`` (:func:`sedensenet.engine.device.cpu_bf16`: predict in float32 there) and the fast
paths (:func:`sedensenet.models.fast_storage.float32_convolutions`: under bf16 autocast, compute the convolutions
in float32 there). Both read the one table of CPUs measured slower, :data:`SLOW_AVX512_BF16`.
"""

from __future__ import annotations

import contextlib
import functools

import torch

SLOW_AVX512_BF16 = {("GenuineIntel", 6, 143): "Sapphire Rapids", ("GenuineIntel", 6, 207): "Emerald Rapids"}
"""x86 CPUs (vendor, family, model) whose AVX512-BF16 runs slower than their float32 when AMX is not available to
the process (hidden by a hypervisor, as on the VM of benchmarks/README.md, or disabled). Measured on Emerald
Rapids (model 207): oneDNN's bf16 convolutions at 86 GFLOP/s against 141 in float32, a 2048-square matmul at 165
against 350, our DenseNet-121 training at 0.64-0.75x and inference at 0.74x its float32 speed; each of
DenseNet's convolutions alone, forward and backward, 1.2-2.2x slower in bf16, median 1.7-1.8x
(``benchmarks/conv_precision.py --work convs``).
Sapphire Rapids has the same cores' bf16 units. Other CPUs with AVX512-BF16 (AMD's Zen 4 and 5: bf16 1.6-1.8x
float32 on an EPYC; Cooper Lake) keep bf16. ``python benchmarks/precision.py`` measures a CPU not listed."""


@functools.lru_cache(maxsize=1)
def cpu_id() -> tuple[str, int, int] | None:
    """(vendor, family, model) of the first CPU in ``/proc/cpuinfo`` (x86 Linux); None where it cannot be read.
    Read once per process: ``--amp auto`` asks for each plan, run and prediction."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if not line.strip():
                break  # the first processor's block is enough
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    try:
        return fields["vendor_id"], int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return None


def slow_bf16_units() -> str | None:
    """The name of this CPU when it is one of :data:`SLOW_AVX512_BF16` and AMX is not available, else None."""
    name = SLOW_AVX512_BF16.get(cpu_id() or ("", -1, -1))
    if name is None:
        return None
    try:
        amx = bool(torch.cpu.get_capabilities().get("amx_bf16"))
    except (AttributeError, RuntimeError):
        amx = False
    return None if amx else name
