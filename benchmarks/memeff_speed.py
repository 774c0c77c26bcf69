"""Is the memory-efficient path slower than the tuned default on CPU, and where? (issue 14)

For each preset (DenseNet-121/169/201 + SE, the tutorial's ``keras_se_*``) at 128 and 224 px and batch 16 and
32, in float32 and in bf16 autocast (what ``--amp auto`` picks on a CPU with bf16 matrix units), the two paths
run as ``sedensenet train`` runs them: the default path with the CLI's glibc tuning, the memory-efficient one
without. Steps are interleaved one by one in two live processes (``bench.py``'s method), so the ratio, memory-
efficient img/s over the default's (the median over rounds), is immune to slow drifts of the machine. Each
process reports its own peak RSS after the warm-up and the timed steps: the multi-step peaks that calibrate
``sedensenet.engine.memory``.

    python benchmarks/memeff_speed.py --output benchmarks/results/memeff_speed.md    # ~25 min on 2 cores
    python benchmarks/memeff_speed.py --models 121 --precisions bf16                   # a subset
    python benchmarks/memeff_speed.py --estimates benchmarks/results/memeff_speed.json   # estimate vs measured
    python benchmarks/memeff_speed.py --fit benchmarks/results/memeff_speed.json         # the estimate's constants
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Config, Row, Setting, machine, run_setting, write_results  # noqa: E402

PRESETS = {"121": "keras_se_densenet121", "169": "keras_se_densenet169", "201": "keras_se_densenet201"}
SIZES = (128, 224)
BATCHES = (16, 32)


def settings(models: list[str], precisions: list[str], steps: int, warmup: int) -> list[Setting]:
    """One setting per (preset, size, batch, precision): the default path as baseline, memory-efficient against it."""
    out = []
    for key in models:
        for precision in precisions:
            for size in SIZES:
                for batch in BATCHES:
                    spec = {"model": PRESETS[key], "amp": precision == "bf16"}
                    base = Config(f"DenseNet-{key} {precision} default + tune_malloc() (CLI)", "ours",
                                  {**spec, "tune_malloc": True})  # fmt: skip
                    cand = Config(f"DenseNet-{key} {precision} memory_efficient (CLI)", "ours",
                                  {**spec, "memory_efficient": True})  # fmt: skip
                    out.append(Setting("train", size, batch, "glibc", base, [cand], steps, warmup))
    return out


def table(rows: list[Row]) -> str:
    """One line per setting: both paths' img/s and peak RSS, and the speed ratio with its range."""
    lines = [
        "| model | precision | size/batch | default img/s | memory-efficient img/s | memory-efficient speed "
        "(range) | default peak RSS GB | memory-efficient peak RSS GB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for base, cand in zip(rows[::2], rows[1::2], strict=True):
        s = base.setting
        model, precision = base.config.name.split()[:2]
        if cand.error or base.error:
            lines.append(f"| {model} | {precision} | {s.size}/{s.batch} | failed: {cand.error or base.error} |||||")
            continue
        ratio = statistics.median(cand.ratios)
        lines.append(
            f"| {model} | {precision} | {s.size}/{s.batch} | {base.images_per_second:.1f} | "
            f"{cand.images_per_second:.1f} | **{ratio:.2f}x** ({min(cand.ratios):.2f}-{max(cand.ratios):.2f}) | "
            f"{base.final['peak_rss_mb'] * 2**20 / 1e9:.2f} | {cand.final['peak_rss_mb'] * 2**20 / 1e9:.2f} |"
        )
    return "\n".join(lines)


def estimates(results: Path) -> str:
    """Markdown rows: ``sedensenet.engine.memory.estimate_peak`` next to every measured peak in ``results``."""
    from sedensenet.engine.memory import estimate_peak

    lines = [
        "| model | precision | size/batch | path | estimated GB | measured GB (peak RSS) | estimate / measured |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in json.loads(results.read_text()):
        if not r["final"]:
            continue
        spec, (size, batch) = r["spec"], map(int, r["setting"].split()[1].split("/"))
        me, amp = bool(spec.get("memory_efficient")), bool(spec.get("amp"))
        est = estimate_peak(spec["model"], size, batch, me, "cpu", amp) / 1e9
        peak = r["final"]["peak_rss_mb"] * 2**20 / 1e9
        path = "memory-efficient" if me else "default (tuned malloc)"
        lines.append(f"| {spec['model']} | {'bf16' if amp else 'fp32'} | {size}/{batch} | {path} | {est:.2f} | "
                     f"{peak:.2f} | {est / peak:.2f} |")  # fmt: skip
    return "\n".join(lines)


def fit(results: Path) -> str:
    """The least-squares constants of ``sedensenet.engine.memory.CPU_COSTS`` from the peaks in ``results``: per
    (path, precision), peak - 16 bytes per parameter = fixed + batch x (a x concatenated + b x other elements), with
    ``a`` held at zero on the memory-efficient path (it keeps no concatenated input)."""
    import numpy as np

    from sedensenet.engine.memory import _parameter_count, activation_counts
    from sedensenet.models import model_config

    groups: dict[tuple[bool, bool], list[tuple[list[float], float]]] = {}
    for r in json.loads(results.read_text()):
        if not r["final"]:
            continue
        spec, (size, batch) = r["spec"], map(int, r["setting"].split()[1].split("/"))
        cfg = model_config(spec["model"], num_classes=2)
        concat, outputs = activation_counts(cfg, size)
        peak = r["final"]["peak_rss_mb"] * 2**20 - 16 * _parameter_count(cfg)
        key = (bool(spec.get("memory_efficient")), bool(spec.get("amp")))
        groups.setdefault(key, []).append(([1.0, batch * concat, batch * outputs], peak))
    lines = []
    for (me, amp), rows in sorted(groups.items()):
        a = np.array([x for x, _ in rows])[:, [0, 2] if me else [0, 1, 2]]
        coef = np.linalg.lstsq(a, np.array([y for _, y in rows]), rcond=None)[0]
        fixed, per_concat, per_output = (coef[0], 0.0, coef[1]) if me else coef
        lines.append(f"({me}, {amp}): PathCost(fixed={fixed / 1e9:.3f}e9, per_concat={per_concat:.2f}, "
                     f"per_output={per_output:.2f}),  # {len(rows)} rows")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(PRESETS), default=sorted(PRESETS))
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=4, help="timed rounds per setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output", type=Path, help="write the markdown table here and the raw times beside it")
    parser.add_argument("--estimates", type=Path, help="print the memory estimates next to the peaks in this JSON")
    parser.add_argument("--fit", type=Path, help="print the memory estimate's constants fitted to this JSON")
    args = parser.parse_args(argv)
    if args.estimates:
        print(estimates(args.estimates))
        return 0
    if args.fit:
        print(fit(args.fit))
        return 0
    start, load0 = time.perf_counter(), os.getloadavg()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    for setting in settings(args.models, args.precisions, args.steps, args.warmup):
        rows += run_setting(setting, "cpu", 2, log)
    header = (
        f"Run {datetime.datetime.now().isoformat(timespec='minutes')} on {machine()}; wall time "
        f"{(time.perf_counter() - start) / 60:.1f} min, load average {load0[0]:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end. {args.warmup} warm-up and {args.steps} timed steps per path; speed is "
        "the median over interleaved rounds of default step time / memory-efficient step time."
    )
    text = header + "\n\n" + table(rows) + "\n"
    print(text)
    if args.output:
        write_results(args.output, text, rows)
    return 0 if not any(r.error for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
