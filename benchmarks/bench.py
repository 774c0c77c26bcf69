"""Speed and memory of sedensenet's DenseNet-121 + SE against its peers, as ratios to a baseline in the same run.

Every configuration runs in its own process (so its peak RSS is its own), and its steps are interleaved one
by one with the baseline's, which stays alive for the whole setting: each round times one baseline step and one
candidate step (alternating which goes first), and a candidate's speed ratio is the median over rounds of
``baseline seconds / candidate seconds``. Other load on the machine hits both sides of a round alike.

    python benchmarks/bench.py                 # full run (CPU: about 12-15 minutes on 2 cores)
    python benchmarks/bench.py --quick         # fewer steps and configurations, no compile
    python benchmarks/bench.py --configs 'bf16|CLI|inference path'   # only some rows (regex on the name)
    python benchmarks/bench.py --device cuda   # AMP bf16 + channels_last + compile, 224 and 128 px

See benchmarks/README.md for what each row means and the latest table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker.py"
JEMALLOC = "libjemalloc.so.2"
JEMALLOC_CONF = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"  # never return memory to the kernel


@dataclass
class Config:
    """One row: a model kind and how it runs."""

    name: str
    kind: str
    spec: dict[str, Any] = field(default_factory=dict)
    python: str | None = None
    """Interpreter for the worker (the Keras peer runs under a TensorFlow environment)."""


@dataclass
class Setting:
    """A task at one image size and batch, under one allocator: a baseline and the candidates against it."""

    task: str
    size: int
    batch: int
    allocator: str
    baseline: Config
    candidates: list[Config]
    steps: int
    warmup: int


@dataclass
class Row:
    setting: Setting
    config: Config
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    pair_rates: list[float] = field(default_factory=list)
    """Baseline only: its median img/s during each candidate's rounds (how much the machine drifted)."""
    ready: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.setting.batch / statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def memory_mb(self) -> float:
        return float(self.final.get("cuda_peak_mb", self.final.get("peak_rss_mb", float("nan"))))


class Worker:
    """A running ``_worker.py`` process."""

    def __init__(self, config: Config, setting: Setting, device: str, threads: int) -> None:
        spec = {"kind": config.kind, "task": setting.task, "size": setting.size, "batch": setting.batch,
                "device": device, "threads": threads, "warmup": setting.warmup, **config.spec}  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
        if spec.get("compile") or spec.get("backend") == "compile":
            env["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"  # report a first compile, not a cache hit
        if setting.allocator == "jemalloc":
            env.update(LD_PRELOAD=JEMALLOC, MALLOC_CONF=JEMALLOC_CONF)
        elif setting.allocator == "glibc tuned":
            spec["tune_malloc"] = True  # sedensenet.inference.tune_malloc() in every process, the baseline's too
        python = config.python or sys.executable
        self.proc = subprocess.Popen(
            [python, str(WORKER), json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            raise RuntimeError(err[-1] if err else f"worker exited with {self.proc.wait()}")
        return json.loads(line)

    def step(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self.read()["t"])

    def finish(self) -> dict[str, Any]:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        final = self.read()
        self.proc.wait(timeout=60)
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_setting(setting: Setting, device: str, threads: int, log: Any) -> list[Row]:
    """Time the baseline and each candidate, interleaved step by step; one candidate process at a time."""
    base_row = Row(setting, setting.baseline)
    base = Worker(setting.baseline, setting, device, threads)
    try:
        base_row.ready = base.read()
    except RuntimeError as e:
        base.kill()
        base_row.error = str(e)
        return [base_row]
    rows = [base_row]
    for config in setting.candidates:
        row = Row(setting, config)
        rows.append(row)
        log(f"  {setting.task} {setting.size}px b{setting.batch} [{setting.allocator}] {config.name} ...")
        cand = Worker(config, setting, device, threads)
        try:
            row.ready = cand.read()
            pair = []
            for r in range(setting.steps):
                if r % 2 == 0:
                    tb, tc = base.step(), cand.step()
                else:
                    tc, tb = cand.step(), base.step()
                pair.append(tb)
                row.seconds.append(tc)
                row.ratios.append(tb / tc)
            base_row.seconds += pair
            base_row.pair_rates.append(setting.batch / statistics.median(pair))
            row.final = cand.finish()
            # Logged as it comes, so a run stopped midway (a busy machine) still leaves its finished rows.
            log(f"    speed {statistics.median(row.ratios):.2f}x (ratios {', '.join(f'{v:.2f}' for v in row.ratios)}), "
                f"candidate {row.seconds}, baseline {pair}, final {row.final}")  # fmt: skip
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError) as e:
            row.error = str(e)[-200:]
        finally:
            cand.kill()
    base_row.ratios = [1.0] * len(base_row.seconds)
    try:
        base_row.final = base.finish()
    finally:
        base.kill()
    return rows


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN as a dash


def table(rows: list[Row], device: str) -> str:
    """The markdown table: one line per configuration, ratios against the setting's baseline."""
    mem = "peak CUDA MiB" if device == "cuda" else "peak RSS MiB"
    lines = [
        f"| task | size/batch | allocator | configuration | img/s | speed vs baseline | {mem} | "
        "activations MiB | memory vs baseline | setup s | params |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_setting: dict[int, list[Row]] = {}
    for row in rows:
        by_setting.setdefault(id(row.setting), []).append(row)
    for group in by_setting.values():
        base = group[0]
        for row in group:
            s = row.setting
            head = f"| {s.task} | {s.size}/{s.batch} | {s.allocator} | {row.config.name} |"
            if row.error:
                lines.append(f"{head} failed: {row.error.replace('|', '/')} | | | | | | |")
                continue
            ratio = statistics.median(row.ratios) if row.ratios else float("nan")
            spread = f" ({min(row.ratios):.2f}-{max(row.ratios):.2f})" if len(row.ratios) > 1 else ""
            if row is base and row.pair_rates:
                spread = f" (its img/s per pair {min(row.pair_rates):.1f}-{max(row.pair_rates):.1f})"
            activ = row.memory_mb - row.ready.get("build_rss_mb", float("nan")) if device != "cuda" else float("nan")
            setup = row.ready.get("build_s", float("nan")) + row.ready.get("warmup_s", float("nan"))
            lines.append(
                f"{head} {_fmt(row.images_per_second, '.2f')} | {_fmt(ratio, '.2f')}x{spread} | "
                f"{_fmt(row.memory_mb, '.0f')} | {_fmt(activ, '.0f')} | "
                f"{_fmt(row.memory_mb / base.memory_mb, '.2f')}x | "
                f"{_fmt(setup, '.1f')} | {row.ready.get('params', '-'):,} |"
            )
    return "\n".join(lines)


def adam_step(model: Any, x: Any, y: Any, bf16: bool) -> Callable[[], None]:
    """One training step as the one-process scripts time it: Adam, cross-entropy, under bf16 autocast when
    ``bf16`` (the loss in float32)."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    return step


def infer_step(model: Any, x: Any, bf16: bool) -> Callable[[], None]:
    """One inference batch as the one-process scripts time it: inference mode, under bf16 autocast when ``bf16``."""
    import torch

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    return step


def patched(step: Callable[[], None], target: Any, name: str, value: Any) -> Callable[[], None]:
    """``step`` with ``target.name`` replaced by ``value`` while it runs: the "before" row of a one-process A/B
    script, the old code put back for its steps only."""
    from unittest import mock

    def run() -> None:
        with mock.patch.object(target, name, value):
            step()

    return run


def interleaved_cpu_seconds(
    steps: dict[str, Callable[[], None]], rounds: int, clock: str = "cpu"
) -> dict[str, list[float]]:
    """Seconds per step, for one-process A/B scripts: every step run once to warm up, then once per round in turn,
    the order reversed every other round (drift falls on both sides alike). ``clock``: this process's CPU time
    (``cpu``, what one thread is timed by) or ``wall`` (what more threads are timed by)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    for step in steps.values():
        step()
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = now()
            steps[name]()
            seconds[name].append(now() - start)
    return seconds


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of ``numerator / denominator`` (paired round by round)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def machine() -> str:
    """CPU, cores, memory, library versions: the header every table needs."""
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        names = re.findall(r"model name\s*:\s*(.*)", f.read())
    cpu = names[0] if names else cpu
    with open("/proc/meminfo") as f:
        mem_gib = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1)) / 2**20
    versions = []
    for mod in ("torch", "torchvision", "timm", "onnxruntime", "numpy"):
        if importlib.util.find_spec(mod):
            versions.append(f"{mod} {_version(mod)}")
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB; Python {platform.python_version()}; " + ", ".join(
        versions
    )


def _version(mod: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(mod)
    except PackageNotFoundError:
        return "?"


def keras_python(explicit: str | None) -> str | None:
    """An interpreter with TensorFlow: ``--keras-python``, this one, or /tmp/tfenv; None when there is none."""
    candidates = [explicit] if explicit else [sys.executable, "/tmp/tfenv/bin/python"]
    for python in candidates:
        if python and Path(python).exists():
            probe = subprocess.run([python, "-c", "import tensorflow"], capture_output=True, env=dict(
                os.environ, TF_CPP_MIN_LOG_LEVEL="3"))  # fmt: skip
            if probe.returncode == 0:
                return python
    return None


def cpu_settings(args: argparse.Namespace, notes: list[str]) -> list[Setting]:
    """The CPU matrix: train 224/16 and 128/32, inference 224/32; glibc (as users run) and jemalloc."""
    quick = args.quick
    tv = Config("torchvision densenet121 + SE (baseline)", "torchvision")
    peers = [Config("torchvision memory_efficient", "torchvision_me")]
    if importlib.util.find_spec("timm"):
        peers.append(Config("timm densenet121 + SE", "timm"))
    else:
        notes.append("timm is not installed: its row is skipped (`pip install timm`).")
    kp = keras_python(args.keras_python)
    if kp:
        peers.append(Config("Keras (TensorFlow) tutorial model", "keras", python=kp))
    else:
        notes.append("TensorFlow is not installed here or in /tmp/tfenv: the Keras row is skipped.")
    ours = [
        Config("ours default", "ours"),
        Config("ours memory_efficient", "ours", {"memory_efficient": True}),
    ]
    if os.environ.get("BENCH_EXPERIMENT"):
        ours += [Config("ours memory_efficient, torchvision's checkpointing", "ours",
                        {"fast_block": False, "memory_efficient": True}),
                 Config("ours reference (set_fast False)", "ours", {"reference": True})]  # fmt: skip
    # What the command-line tool runs: it calls tune_malloc() (the baseline stays plain glibc), except in
    # memory-efficient mode, where the plain row above is the CLI's.
    cli_train = [Config("ours default + tune_malloc() (CLI)", "ours", {"tune_malloc": True})]
    # bf16 autocast (what `--amp auto` picks on CPUs with bf16 matrix units), against the same fp32 baseline.
    bf16_train = [
        Config("ours bf16 default + tune_malloc() (CLI)", "ours", {"tune_malloc": True, "amp": True}),
        Config("ours bf16 memory_efficient", "ours", {"memory_efficient": True, "amp": True}),
    ]
    extra_train = [Config("ours channels_last (model.to)", "ours", {"channels_last": True})]
    compiled = Config("ours torch.compile (channels_last)", "ours", {"compile": True, "channels_last": True})
    steps_train = args.steps or (3 if quick else 5)
    steps_infer = args.steps or (3 if quick else 6)
    warm = args.warmup or 1
    settings = []
    for size, batch in ((224, 16), (128, 32)):
        cands = peers + ours + ([] if quick else cli_train) + bf16_train
        cands += [] if quick or size != 224 else extra_train
        if args.compile and size == 224:
            cands = [*cands, compiled]
        settings.append(Setting("train", size, batch, "glibc", tv, cands, steps_train, warm))
    inf = [
        Config("ours eager (inference path)", "ours", {"backend": "eager"}),
        Config("ours bf16 eager (inference path)", "ours", {"backend": "eager", "amp": True}),
    ]
    if importlib.util.find_spec("onnxruntime"):
        inf.append(Config("ours optimize_for_inference: onnxruntime", "ours", {"backend": "onnxruntime"}))
    else:
        notes.append("onnxruntime is not installed: the ONNX Runtime row is skipped.")
    if os.environ.get("BENCH_EXPERIMENT"):
        inf.append(Config("ours eager, reference block", "ours", {"backend": "eager", "fast_block": False}))
    inf_peers = [p for p in peers if p.kind != "torchvision_me"]
    inf_extra = [
        Config(f"{c.name} + tune_malloc() (CLI)", "ours", {**c.spec, "tune_malloc": True})
        for c in ([] if quick else inf)
    ]
    inf_compiled = (
        [Config("ours optimize_for_inference: compile", "ours", {"backend": "compile"})]
        if args.compile_inference
        else []
    )
    settings.append(
        Setting("infer", 224, 32, "glibc", tv, inf_peers + inf + inf_extra + inf_compiled, steps_infer, warm)
    )
    allocators = ["glibc tuned"] if args.tuned else []
    if args.jemalloc and _has_lib(JEMALLOC):
        allocators.append("jemalloc")
    elif args.jemalloc:
        notes.append("jemalloc is not installed (`apt-get install libjemalloc2`): the jemalloc rows are skipped.")
    for allocator in allocators:  # the same comparison with a fast allocator on both sides
        steps = max(3, steps_train - 1)
        for size, batch in ((224, 16), (128, 32)) if not quick else ((224, 16),):
            settings.append(Setting("train", size, batch, allocator, tv, ours, steps, warm))
        settings.append(Setting("infer", 224, 32, allocator, tv, inf, steps, warm))
    return settings


def cuda_settings(args: argparse.Namespace) -> list[Setting]:
    """The GPU matrix against torchvision at its best eager configuration (AMP bf16 + channels_last), the baseline
    the GPU targets name: ours AMP bf16 + channels_last, memory-efficient (+ compile); torchvision fp32 for scale."""
    amp_cl = {"amp": True, "channels_last": True}
    tv = Config("torchvision AMP bf16 + channels_last eager (baseline)", "torchvision", amp_cl)
    cands = [
        Config("torchvision fp32 eager", "torchvision"),
        Config("ours AMP bf16 + channels_last eager", "ours", amp_cl),
        Config("ours memory_efficient AMP bf16", "ours", {**amp_cl, "memory_efficient": True}),
    ]
    if args.compile:
        cands.append(Config("ours AMP bf16 + channels_last + compile", "ours", {**amp_cl, "compile": True}))
    steps, warm = args.steps or 10, args.warmup or 3
    sizes = ((224, 64), (128, 128))  # the targets' setting (224/64) and the smaller images at a GPU's batch
    settings = [Setting("train", size, batch, "caching", tv, cands, steps, warm) for size, batch in sizes]
    inf = [
        Config("torchvision fp32 eager", "torchvision"),
        Config("ours AMP bf16 + channels_last", "ours", {**amp_cl, "backend": "plain"}),
    ]
    if args.compile:
        inf.append(Config("ours AMP bf16 + channels_last + compile", "ours",
                          {**amp_cl, "backend": "plain", "compile": True}))  # fmt: skip
    settings += [Setting("infer", size, 128, "caching", tv, inf, steps, warm) for size in (224, 128)]
    return settings


def _has_lib(name: str) -> bool:
    return any(Path(d, name).exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rows, no compile, one jemalloc setting")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every configuration")
    parser.add_argument("--steps", type=int, default=0, help="timed rounds per candidate (default 5/6, quick 3)")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up steps per configuration (default 1, GPU 3)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    parser.add_argument("--no-jemalloc", dest="jemalloc", action="store_false", help="skip the jemalloc rows")
    parser.add_argument(
        "--tuned", action="store_true", help="add the ours-vs-baseline rows with tune_malloc() on both sides (~3 min)"
    )
    parser.add_argument(
        "--compile-inference", action="store_true", help="add optimize_for_inference(backend='compile') (~2 min)"
    )
    parser.add_argument("--only", default="", help="run only settings whose 'task size/batch allocator' matches")
    parser.add_argument("--configs", default="", help="run only candidate rows whose name matches (regex)")
    parser.add_argument("--keras-python", help="interpreter with TensorFlow for the Keras row")
    parser.add_argument("--output", type=Path, help="also write the markdown (and a .json of raw times) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.compile = False
    notes: list[str] = []
    settings = cuda_settings(args) if args.device == "cuda" else cpu_settings(args, notes)
    if args.only:
        settings = [s for s in settings if re.search(args.only, f"{s.task} {s.size}/{s.batch} {s.allocator}")]
    for s in settings:
        s.candidates = [c for c in s.candidates if re.search(args.configs, c.name)]
    start, load0 = time.perf_counter(), os.getloadavg()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    for setting in settings:
        rows += run_setting(setting, args.device, args.threads, log)
    wall = time.perf_counter() - start
    header = [
        f"Run {datetime.datetime.now().isoformat(timespec='minutes')} on {machine()}.",
        f"Device {args.device}, {args.threads} threads per configuration, fp32 unless AMP is named; "
        f"wall time {wall / 60:.1f} min; load average {load0[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "Speed: median over rounds of baseline step time / candidate step time (range in brackets), steps interleaved; "
        "img/s: the candidate's median step. Memory: peak RSS of the configuration's process; activations: peak "
        "minus RSS after building the model (for Keras it includes TensorFlow's graph building).",
        *notes,
    ]
    text = "\n\n".join(header) + "\n\n" + table(rows, args.device) + "\n"
    print(text)
    if args.output:
        write_results(args.output, text, rows)
    return 0 if not any(r.error for r in rows) else 1


def write_results(output: Path, text: str, rows: list[Row]) -> None:
    """The markdown table at ``output`` and every row's raw step times and peaks beside it (``.json``)."""
    output.write_text(text)
    raw = [
        {"setting": f"{r.setting.task} {r.setting.size}/{r.setting.batch} {r.setting.allocator}",
         "config": r.config.name, "spec": r.config.spec, "seconds": r.seconds, "ratios": r.ratios, "ready": r.ready,
         "final": r.final, "error": r.error}
        for r in rows
    ]  # fmt: skip
    output.with_suffix(".json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    sys.exit(main())
