"""The markdown table (and the README's speed-table snippet) generated from ``matrix.py``'s raw results.

    python benchmarks/matrix_table.py benchmarks/results/matrix-2026-12-07T0700.json
    # writes matrix-2026-12-07T0700.md beside it and benchmarks/results/README-speed-table.md
    python benchmarks/matrix_table.py results/a.json results/b.json --readme README.md   # several runs' cells
    # also replaces the README's table between its matrix markers with the compact form (one line per
    # family, size and precision; tests/perf check that the README's table is what its named raw file gives)

Ratios are medians over interleaved rounds of twin seconds / ours seconds (range in brackets); the SE cost is how
far the SE variant's ratio is behind its plain preset's in the same cell; memory is peak RSS against the twin's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SNIPPET = HERE / "results" / "README-speed-table.md"


def _ratio(row: dict[str, Any]) -> str:
    if row.get("error") or not row.get("ratios"):
        return f"failed: {str(row.get('error', 'no rounds')).replace('|', '/')[:60]}"
    return f"**{row['ratio']:.2f}x** ({min(row['ratios']):.2f}-{max(row['ratios']):.2f})"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def _rows(cell: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A cell's twin, plain and SE rows (empty ones for what it lacks)."""
    return ((cell or {}).get("rows", []) + [{}, {}, {}])[:3]


def _se_cost(plain: dict[str, Any], se: dict[str, Any]) -> str:
    """How far the SE variant's ratio is behind its plain preset's, e.g. ``+5%`` (``-`` when either is missing)."""
    if plain.get("ratio") and se.get("ratio"):
        return f"{(1 - se['ratio'] / plain['ratio']) * 100:+.0f}%"
    return "-"


def cell_line(cell: dict[str, Any]) -> str:
    """One table line: the twin's img/s, ours and our SE variant against it, the SE cost, memory."""
    twin, plain, se = _rows(cell)
    se_cost = _se_cost(plain, se)
    return (
        f"| {cell['family']} | {cell['size']}/{cell['batch']} | {cell['precision']} | {cell['work']} | "
        f"{_num(twin.get('images_per_s'), '.1f')} | {_num(plain.get('images_per_s'), '.1f')} | {_ratio(plain)} | "
        f"{_ratio(se)} | {se_cost} | {_num(plain.get('memory_vs_twin'), '.2f')}x / "
        f"{_num(se.get('memory_vs_twin'), '.2f')}x | {' '.join(cell.get('loadavg_before', []))} |"
    )


def _malloc(raw: dict[str, Any]) -> str:
    """How the run's workers allocated (runs before ``--malloc`` existed used glibc as it comes)."""
    return "glibc tuned as the CLI tunes it" if raw.get("malloc") == "tuned" else "glibc as it comes"


def table(raw: dict[str, Any]) -> str:
    """The whole table, headed by the machine and the command that measured it."""
    head = [
        f"Measured {raw['started']} UTC on {raw['machine']} ({raw.get('bf16_units', 'bf16 units not recorded')}); "
        f"{raw['threads']} thread(s) per process, steps timed by "
        f"{'CPU time' if raw.get('clock') == 'cpu' else 'wall clock'}, {_malloc(raw)}, "
        f"{raw['steps']} interleaved rounds per row, "
        f"run time {raw.get('wall_s', 0) / 60:.1f} min.",
        f"Command: `{raw['command']}`. Raw results: the .json beside this table.",
        "",
        "| family | size/batch | precision | work | twin img/s | ours img/s | ours / twin | SE variant / twin | "
        "SE cost | peak memory ours / SE vs twin | load avg before |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    return "\n".join(head + [cell_line(c) for c in raw["cells"]]) + "\n"


WORKS = ("train", "train memory-efficient", "infer")
BEGIN, END = "<!-- matrix-table:begin", "<!-- matrix-table:end -->"


def _short(row: dict[str, Any]) -> str:
    if not row or row.get("error") or not row.get("ratios"):
        return "not measured" if not row else "failed"
    return f"{row['ratio']:.2f}x"


def compact_table(raws: list[dict[str, Any]]) -> str:
    """The README's form of one or more runs' results: one line per family, size and precision; each kind of
    work's ratio to its twin (the SE variant's after a slash), the SE cost, and the range of our peak memory
    against the twin's. Each run's machine, clock and command head the table."""
    groups: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = {}
    for raw in raws:
        for cell in raw["cells"]:
            groups.setdefault((cell["family"], cell["size"], cell["precision"]), {})[cell["work"]] = cell
    lines = [
        f"Measured {raw['started']} UTC on {raw['machine']} ({raw.get('bf16_units', 'bf16 units not recorded')}), "
        f"{raw['threads']} thread(s) per process, timed by {'CPU time' if raw.get('clock') == 'cpu' else 'wall clock'}"
        f", {_malloc(raw)}, {raw['steps']} interleaved rounds, {len(raw['cells'])} cells: `{raw['command']}`."
        for raw in raws
    ]
    lines += [
        "Ratios: the torchvision twin's seconds / ours (plain preset / its SE variant), medians over rounds.",
        "",
        "| family | px (train/inference batch) | precision | train | memory-efficient train | inference "
        "| SE cost (train, m-e, inference) "
        "| our peak memory vs twin |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (family, size, precision), works in groups.items():
        batches = "/".join(str(works[w]["batch"]) for w in ("train", "infer") if w in works)
        ratios, costs, mems = [], [], []
        for work in WORKS:
            _, plain, se = _rows(works.get(work))
            ratios.append(f"{_short(plain)} / {_short(se)}" if plain else "not measured")
            costs.append(_se_cost(plain, se))
            mems += [r["memory_vs_twin"] for r in (plain, se) if r.get("memory_vs_twin")]
        mem = f"{min(mems):.2f}-{max(mems):.2f}x" if mems else "-"
        lines.append(
            f"| {family} | {size} ({batches}) | {precision} | {' | '.join(ratios)} | {', '.join(costs)} | {mem} |"
        )
    return "\n".join(lines) + "\n"


def replace_readme_table(readme: Path, raw_paths: list[Path], raws: list[dict[str, Any]]) -> None:
    """Put :func:`compact_table` between the README's markers, the begin marker naming the raw files."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no '{BEGIN} ... -->' / '{END}' markers to put the table between")
    names = " + ".join(p.name for p in raw_paths)
    block = f"{BEGIN} {names}; generated by benchmarks/matrix_table.py, do not edit by hand -->\n"
    readme.write_text(text[:start] + block + compact_table(raws) + text[end:], encoding="utf-8")


def readme_raw_names(readme_text: str) -> list[str]:
    """The raw files the README's matrix table names in its begin marker."""
    marker = readme_text[readme_text.index(BEGIN) :].partition("\n")[0]
    return [n.strip() for n in marker[len(BEGIN) :].split(";")[0].split("+")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, nargs="+", help="matrix-*.json files written by matrix.py")
    parser.add_argument("--snippet", type=Path, default=SNIPPET, help="where the full table's snippet goes")
    parser.add_argument("--readme", type=Path, default=None, help="also replace this README's matrix table")
    args = parser.parse_args(argv)
    raws = [json.loads(path.read_text()) for path in args.raw]
    texts = [table(raw) for raw in raws]
    for path, text in zip(args.raw, texts, strict=True):
        path.with_suffix(".md").write_text(text)
    names = ", ".join(path.name for path in args.raw)
    args.snippet.write_text(
        "<!-- generated by benchmarks/matrix_table.py from " + names + "; do not edit by hand -->\n" + "\n".join(texts)
    )
    if args.readme:
        replace_readme_table(args.readme, args.raw, raws)
    sys.stdout.write("\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
