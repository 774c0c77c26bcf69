"""Never killed for memory: estimate a run's peak, read what the machine has, pick the path before the first step.

The estimate is a **calibrated formula**, not a probe step: it costs nothing at start-up and needs no memory
that might not be there. Per image, the activations a training step keeps are counted from the architecture's
feature-map sizes in two parts: the *concatenated inputs* every dense layer normalises (quadratic in the
layers of a block: what the memory-efficient path recomputes instead of storing) and the *per-layer outputs*
(bottleneck, new features, stem, transitions: linear). Each path and precision (float32, bf16 autocast) has its
own bytes per element for the two parts and its own fixed cost (framework, threads' scratch, allocator), fitted
to the peak RSS of five training steps measured on CPU with ``benchmarks/memeff_speed.py``; weights, gradients and
Adam's two moments add 16 bytes per parameter. How close it comes is in ``benchmarks/README.md`` (the bar is
±15%). On a GPU the same activation counts are used with the precision's bytes, uncalibrated.

The budget is what the process may still grow to: its own resident memory plus the smaller of ``MemAvailable``
and the room left under a cgroup v1/v2 limit, or ``torch.cuda.mem_get_info``'s free memory on a GPU;
``--memory-limit`` / ``SEDENSENET_MEMORY_LIMIT`` override it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sedensenet.config import TrainConfig, parse_size
from sedensenet.errors import UserError
from sedensenet.fileio import atomic_write_json
from sedensenet.models import DenseNet, DenseNetConfig, model_config

log = logging.getLogger(__name__)

ENV_LIMIT = "SEDENSENET_MEMORY_LIMIT"
"""Environment variable that overrides the detected memory budget, e.g. ``6G``."""

MARGIN = 1.15
"""A path fits when its estimate times this is within the budget (the estimate's ±15% bar)."""

RUN_OVERHEAD = 1.2
"""A whole ``sedensenet train`` run peaks above its training steps: data loading, validation, the checkpoint and
the final evaluation add 1.14-1.25x the five-step peak (DenseNet-201, 224 px, batch 32, both paths, float32 and
bf16, ``/usr/bin/time -v`` on the whole command: benchmarks/README.md). The plan compares this times the step
estimate, plus :data:`MARGIN`, with the budget."""

GB = 1e9


@dataclass(frozen=True)
class PathCost:
    """One path's calibrated cost on CPU: fixed bytes, and bytes per element of the two activation counts."""

    fixed: float
    per_concat: float
    per_output: float


CPU_COSTS = {
    (False, False): PathCost(fixed=0.647e9, per_concat=6.94, per_output=13.19),
    (False, True): PathCost(fixed=0.712e9, per_concat=4.14, per_output=5.13),
    (True, False): PathCost(fixed=0.933e9, per_concat=0.0, per_output=4.39),
    (True, True): PathCost(fixed=0.775e9, per_concat=0.0, per_output=2.99),
}
"""Keyed by (memory-efficient, bf16): least squares on ``benchmarks/results/memeff_speed.json`` (peak RSS after
five training steps of DenseNet-121/169/201 at 128/224 px, batch 16/32), the default path with the CLI's malloc
tuning, the memory-efficient one without, as ``sedensenet train`` runs them. The memory-efficient path keeps
nothing per concatenated element, so that term is held at zero."""

GPU_FIXED = 0.6e9
"""CUDA context and library workspaces on a GPU (not calibrated)."""

MEMEFF_SPEED_CPU: dict[tuple[str, bool], dict[tuple[int, int], float]] = {
    ("keras_se_densenet121", True): {(128, 16): 0.88, (128, 32): 0.85, (224, 16): 0.81, (224, 32): 0.84},
    ("keras_se_densenet121", False): {(128, 16): 0.84, (128, 32): 0.84, (224, 16): 0.85, (224, 32): 0.73},
    ("keras_se_densenet169", True): {(128, 16): 0.89, (128, 32): 0.94, (224, 16): 0.85, (224, 32): 0.87},
    ("keras_se_densenet169", False): {(128, 16): 0.83, (128, 32): 0.85, (224, 16): 0.90, (224, 32): 0.78},
    ("keras_se_densenet201", True): {(128, 16): 0.92, (128, 32): 0.91, (224, 16): 0.89, (224, 32): 0.86},
    ("keras_se_densenet201", False): {(128, 16): 0.97, (128, 32): 0.88, (224, 16): 0.91, (224, 32): 0.79},
}
"""Memory-efficient img/s over the tuned default's on CPU, keyed by (preset, bf16) then (image size, batch):
``benchmarks/results/memeff_speed.md`` (medians of interleaved steps on a quiet 2-core machine). Slower
everywhere measured, 0.73-0.97x, so it is not the CPU default outright: ``auto`` takes it when the default path
does not fit, or where it is within 5% (DenseNet-201, fp32, 128/16)."""

MEMEFF_SPEED_OTHER = {True: 0.87, False: 0.85}
"""The median of the table above per precision (bf16 / float32), for models, sizes and batches it lacks."""


class MemoryPlanError(UserError, RuntimeError):
    """No path fits the memory available: the message gives the largest batch that fits and its ``--accumulate``."""


# ---- how much memory a step takes ----


def activation_counts(cfg: DenseNetConfig, image_size: int) -> tuple[float, float]:
    """Elements per image a training step keeps: (dense layers' concatenated inputs, every other feature map)."""
    g, side = cfg.growth_rate, float(image_size)
    channels = cfg.num_init_features
    if cfg.stem == "imagenet":  # 7x7/2 convolution (its BN and ReLU), then the 3x3/2 max-pool
        side = math.floor((side - 1) / 2) + 1
        outputs = channels * side**2
        side = math.floor((side - 1) / 2) + 1
        outputs += channels * side**2
    else:
        outputs = channels * side**2
    concat = 0.0
    for i, layers in enumerate(cfg.block_config):
        area = max(side, 1.0) ** 2
        for j in range(layers):
            concat += (channels + j * g) * area
            outputs += (cfg.bn_size * g + g) * area
        channels += layers * g
        if i < len(cfg.block_config) - 1:
            outputs += channels * area
            channels = int(channels * cfg.compression)
            side = math.floor(side / 2)
    return concat, outputs + channels * max(side, 1.0) ** 2


def estimate_peak(
    model: str | DenseNetConfig,
    image_size: int,
    batch_size: int,
    memory_efficient: bool,
    device_type: str = "cpu",
    amp: bool = False,
    whole_run: bool = False,
) -> int:
    """Estimated peak memory of training ``model`` in bytes: resident memory on CPU, allocated memory on a GPU.

    ``amp``: under bf16/fp16 autocast (on CPU the bf16 fit; on a GPU the float32 fit's activations halved).
    ``whole_run``: the peak of a whole ``sedensenet train`` run (times :data:`RUN_OVERHEAD`), what the plan
    compares with the budget and reports; otherwise that of the training steps alone.
    """
    factor = RUN_OVERHEAD if whole_run else 1.0
    cfg = model_config(model, num_classes=2) if isinstance(model, str) else model
    concat, outputs = activation_counts(cfg, image_size)
    params = _parameter_count(cfg)
    if device_type == "cpu":
        cost = CPU_COSTS[memory_efficient, amp]
        peak = cost.fixed + 16 * params + batch_size * (cost.per_concat * concat + cost.per_output * outputs)
        return int(peak * factor)
    cost = CPU_COSTS[memory_efficient, False]
    scale = 0.5 if amp else 1.0  # half-precision activations (uncalibrated on a GPU)
    peak = GPU_FIXED + 16 * params + batch_size * (cost.per_concat * concat + cost.per_output * outputs) * scale
    return int(peak * factor)


def low_precision(config: TrainConfig, device: torch.device) -> bool:
    """Whether the run will train under bf16/fp16 autocast, as ``--amp`` resolves on ``device``."""
    from sedensenet.engine.device import amp_dtype

    return amp_dtype(config.amp, device, quiet=True, training=True) is not None


def _parameter_count(cfg: DenseNetConfig) -> int:
    """Weights of the network, counted on the meta device (no memory), once per configuration: building even a
    meta DenseNet-201 takes ~0.2 s, and the batch advice estimates up to one run per batch size."""
    return _count_parameters(json.dumps(asdict(cfg), sort_keys=True, default=str))


@functools.lru_cache(maxsize=64)
def _count_parameters(cfg_json: str) -> int:
    with torch.device("meta"):
        net = DenseNet(DenseNetConfig(**json.loads(cfg_json)))
    return sum(p.numel() for p in net.parameters())


# ---- how much memory there is ----


@dataclass(frozen=True)
class Budget:
    """Bytes the process may grow to, and where the figure came from (for the log and config.yaml)."""

    bytes: int
    source: str


def memory_budget(device: torch.device, limit: str = "") -> Budget:
    """The override (``limit``, else ``SEDENSENET_MEMORY_LIMIT``), else what ``device`` has free for this process."""
    if limit:
        return Budget(parse_size(limit), f"--memory-limit {limit}")
    if os.environ.get(ENV_LIMIT):
        return Budget(parse_size(os.environ[ENV_LIMIT], ENV_LIMIT), f"{ENV_LIMIT}={os.environ[ENV_LIMIT]}")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return Budget(int(free + torch.cuda.memory_allocated(device)), "torch.cuda.mem_get_info")
    own = _rss()
    room, source = _meminfo_available(), "MemAvailable"
    cgroup = _cgroup_room()
    if cgroup is not None and cgroup[0] < room:
        room, source = cgroup
    return Budget(own + room, source)


def _rss() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def _meminfo_available() -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    import psutil  # not Linux: psutil knows

    return int(psutil.virtual_memory().available)


def _cgroup_room() -> tuple[int, str] | None:
    """Bytes left under this process's memory cgroup limit (v2, then v1), or None without a limit."""
    v2 = _cgroup_v2_dir()
    candidates = []
    if v2 is not None:
        candidates.append((v2 / "memory.max", v2 / "memory.current", "cgroup v2 memory.max"))
    v1 = Path("/sys/fs/cgroup/memory")
    candidates.append((v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes", "cgroup v1 memory.limit_in_bytes"))
    for limit_file, usage_file, name in candidates:
        try:
            text = limit_file.read_text().strip()
            if text == "max" or int(text) >= 2**60:
                continue
            return max(0, int(text) - int(usage_file.read_text().strip())), name
        except (OSError, ValueError):
            continue
    return None


def _cgroup_v2_dir() -> Path | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    except OSError:
        pass
    return None


# ---- the choice ----


@dataclass
class MemoryPlan:
    """The path a run takes and why; stored as ``memory_plan`` in config.yaml."""

    memory_efficient: bool
    requested: str
    estimate_gb: float
    default_gb: float
    efficient_gb: float
    budget_gb: float
    budget_source: str
    reason: str
    precision: str = "fp32"
    """The precision the estimate assumed: ``bf16`` when the run trains under autocast (as ``--amp`` resolves)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_memory(
    config: TrainConfig, device: torch.device, batch_size: int, replicas: int = 1, cap: int | None = None
) -> MemoryPlan:
    """Pick the path for ``--memory-efficient`` (``auto``: the fastest that fits, the leaner one when about as fast).

    ``batch_size`` is this process's batch; ``replicas`` processes on one CPU share its memory. Raises
    :class:`MemoryPlanError` with the largest batch that fits and the ``--accumulate`` keeping the effective
    batch when ``auto`` finds no path that fits; ``on``/``off`` only warn. ``cap``: bytes a killed run reached,
    which the budget is then held below.
    """
    budget = memory_budget(device, config.memory_limit)
    if cap is not None and cap < budget.bytes:
        budget = Budget(int(cap * 0.9), f"90% of where the last run was killed, {cap / GB:.1f} GB")
    share = budget.bytes // replicas if device.type == "cpu" else budget.bytes
    amp = low_precision(config, device)
    est = {
        me: estimate_peak(config.model, config.image_size, batch_size, me, device.type, amp, whole_run=True)
        for me in (False, True)
    }
    fits = {me: est[me] * MARGIN <= share for me in est}
    requested = config.memory_efficient
    if requested != "auto":
        chosen = requested == "on"
        reason = f"--memory-efficient {requested}"
        if not fits[chosen]:
            advice = _advice(config, device, share, batch_size)
            log.warning("--memory-efficient %s: estimated peak %.1f GB is near or above the %.1f GB available (%s); %s",
                        requested, est[chosen] / GB, share / GB, budget.source, advice)  # fmt: skip
    elif not any(fits.values()):
        raise MemoryPlanError(
            f"not enough memory to train {config.model} at {config.image_size} px, batch {batch_size}: estimated "
            f"peak {est[True] / GB:.1f} GB on the memory-efficient path ({est[False] / GB:.1f} GB on the default "
            f"one), {share / GB:.1f} GB available ({budget.source}). {_advice(config, device, share, batch_size)}"
        )
    else:
        chosen, reason = _fastest(fits, est, device, memeff_speed_ratio(config, batch_size, amp))
    plan = MemoryPlan(
        memory_efficient=chosen, requested=requested, estimate_gb=round(est[chosen] / GB, 2),
        default_gb=round(est[False] / GB, 2), efficient_gb=round(est[True] / GB, 2),
        budget_gb=round(share / GB, 2), budget_source=budget.source, reason=reason,
        precision=_precision(config, device, amp),
    )  # fmt: skip
    name = "memory-efficient" if chosen else "default"
    log.info("memory: %s path, estimated peak %.1f GB (%s) of %.1f GB available (%s); %s",
             name, plan.estimate_gb, plan.precision, plan.budget_gb, budget.source, reason)  # fmt: skip
    return plan


def _precision(config: TrainConfig, device: torch.device, amp: bool) -> str:
    if not amp:
        return "fp32"
    if config.amp != "auto":
        return config.amp
    return "bf16" if device.type == "cpu" else "amp"


def _fastest(fits: dict[bool, bool], est: dict[bool, int], device: torch.device, ratio: float) -> tuple[bool, str]:
    """Among the paths that fit, the one expected to be fastest; the leaner one when within 5% (``ratio``: the
    memory-efficient path's expected speed over the default's on CPU)."""
    if not fits[False]:
        return True, f"auto: the default path ({est[False] / GB:.1f} GB) would not fit"
    if not fits[True]:
        return False, "auto: only the default path fits"
    if device.type != "cpu":
        return False, "auto: both fit; on a GPU the default path is faster (no recomputation)"
    if ratio >= 0.95:
        return True, f"auto: both fit; memory-efficient is about as fast here ({ratio:.2f}x) and leaner"
    return False, f"auto: both fit; the default path is faster here (memory-efficient ~{ratio:.2f}x)"


def memeff_speed_ratio(config: TrainConfig, batch_size: int, amp: bool) -> float:
    """Expected img/s of the memory-efficient path over the tuned default's on CPU: the measured
    :data:`MEMEFF_SPEED_CPU` entry for the preset at the nearest measured size and batch, else the precision's
    median (:data:`MEMEFF_SPEED_OTHER`)."""
    table = MEMEFF_SPEED_CPU.get((config.model, amp)) if isinstance(config.model, str) else None
    if not table:
        return MEMEFF_SPEED_OTHER[amp]
    key = min(table, key=lambda k: (abs(math.log(k[0] / config.image_size)), abs(math.log(k[1] / batch_size))))
    return table[key]


def largest_batch(config: TrainConfig, device: torch.device, budget: int, effective: int) -> int:
    """The largest batch dividing ``effective`` whose memory-efficient estimate fits ``budget`` (0: none)."""
    amp = low_precision(config, device)
    for b in range(effective, 0, -1):
        peak = estimate_peak(config.model, config.image_size, b, True, device.type, amp, whole_run=True)
        if effective % b == 0 and peak * MARGIN <= budget:
            return b
    return 0


def _advice(config: TrainConfig, device: torch.device, budget: int, batch_size: int) -> str:
    effective = batch_size * config.accumulate
    b = largest_batch(config, device, budget, effective)
    if b:
        return (
            f"Use --memory-efficient on --batch-size {b} --accumulate {effective // b} (the same effective batch "
            f"of {effective}; BatchNorm then sees batches of {b})"
        )
    smaller = config.image_size * 3 // 4
    return f"Even batch 1 does not fit: use a smaller --image-size (e.g. {smaller}) or a smaller model"


# ---- a run the kernel killed ----

NOTE = Path("state") / "running.json"
"""Written while a CPU run trains, removed on every exit Python sees: found at start-up, it means the last run was
killed (SIGKILL: the kernel's OOM killer or another process), and its peak says at about what size."""


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@contextlib.contextmanager
def run_note(run_dir: Path, config: TrainConfig, plan: MemoryPlan, interval: float = 1.0) -> Iterator[None]:
    """Keep ``run_dir/state/running.json`` up to date with this process's peak resident memory while training
    (with the settings and the memory ``plan`` it trains on, which the next start compares)."""
    path = Path(run_dir) / NOTE
    base = {
        "pid": os.getpid(), "batch_size": config.batch_size, "accumulate": config.accumulate,
        "image_size": config.image_size, "memory_plan": plan.to_dict(),
    }  # fmt: skip
    stop = threading.Event()
    written = [0]

    def write() -> None:
        peak = _peak_rss()
        if peak > written[0] * 1.02:
            with contextlib.suppress(OSError):
                atomic_write_json(path, {**base, "peak_rss_gb": round(peak / GB, 2), "time": time.time()})
            written[0] = peak

    def sample() -> None:
        while not stop.wait(interval):
            write()

    write()
    thread = threading.Thread(target=sample, name="sedensenet-memory-note", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(OSError):
            path.unlink()


def last_run_died(run_dir: Path) -> dict[str, Any] | None:
    """The note a killed run left in ``run_dir`` (see :data:`NOTE`), or None."""
    try:
        note = json.loads((Path(run_dir) / NOTE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) and isinstance(note.get("peak_rss_gb"), int | float) else None


def describe_death(note: dict[str, Any]) -> str:
    """One sentence: how big the killed run was and how it was set up."""
    plan = note.get("memory_plan") or {}
    path = "memory-efficient" if plan.get("memory_efficient") else "default"
    return (
        f"the last run died at about {note['peak_rss_gb']:.1f} GB resident (killed: probably out of memory) on the "
        f"{path} path, batch {note.get('batch_size')}, --accumulate {note.get('accumulate', 1)}"
    )


def what_changed(note: dict[str, Any], plan: MemoryPlan, config: TrainConfig) -> str:
    """What this start does differently from the run that was killed."""
    before = (note.get("memory_plan") or {}).get("memory_efficient")
    changes = []
    if before is not None and bool(before) != plan.memory_efficient:
        changes.append(f"takes the {'memory-efficient' if plan.memory_efficient else 'default'} path")
    if note.get("batch_size") != config.batch_size:
        changes.append(f"uses batch {config.batch_size} (was {note.get('batch_size')})")
    if note.get("accumulate", 1) != config.accumulate:
        changes.append(f"accumulates {config.accumulate} (was {note.get('accumulate', 1)})")
    if not changes:
        return (
            f"this run changes nothing (estimated {plan.estimate_gb:.1f} GB): free memory, or pass "
            f"--memory-efficient on / a smaller --batch-size with --accumulate"
        )
    return f"this run {', '.join(changes)}: estimated {plan.estimate_gb:.1f} GB"
