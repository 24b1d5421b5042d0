"""The methods comparison (configs/methods.yaml): one row per run, its last-iterate
exploitability (mean ± SE over replicates, each replicate's value), the exact tabular analogue
of its schedule from the measured SFT mix, and its final checkpoint in the checkpoints'
meta-game (Nash weight, pool exploitability, Nash-averaged rating).

    python -m linepo.evaluation.methods results/summary        # a markdown table

It only reads the pooled tables the workflow writes (``exploitability.tsv``,
``prox_fidelity_runs.tsv``, ``evaluation.tsv`` in ``results/summary/``), so the table is the
workflow's numbers, formatted; a run missing from a table gets "—" there, never a guess.
"""

from __future__ import annotations

import sys
from pathlib import Path

from linepo.evaluation.pooled import read_tsv


def _number(row: dict | None, column: str) -> float | None:
    if row is None or row.get(column) in (None, "", "nan"):
        return None
    return float(row[column])


def _mean_se(row: dict | None, column: str, digits: int = 3) -> str:
    mean, se = _number(row, column), _number(row, column + "_se")
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def methods_rows(summary_dir) -> list[dict]:
    """One dict per run of ``exploitability.tsv`` (SFT first, then the table's order), with the
    cells of the other two tables (``None`` where a table has no row for it)."""
    summary_dir = Path(summary_dir)
    exploitability = read_tsv(summary_dir / "exploitability.tsv", "exploitability table")
    fidelity = {r["run"]: r for r in read_tsv(summary_dir / "prox_fidelity_runs.tsv", "Prox-fidelity table")}
    evaluation = {r["checkpoint"]: r for r in read_tsv(summary_dir / "evaluation.tsv", "summary table")}
    return [{"run": r["run"], "exploitability": r, "fidelity": fidelity.get(r["run"]),
             "evaluation": evaluation.get(r["run"])} for r in exploitability]


def format_methods(rows: list[dict]) -> str:
    """The markdown table of :func:`methods_rows`."""
    lines = ["| run | last-iterate exploitability (n) | replicates | exact analogue | gap | meta-game Nash weight "
             "| pool exploitability | Nash-averaged |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        e, f, v = row["exploitability"], row["fidelity"], row["evaluation"]
        per = ", ".join(f"{float(value.split(':', 1)[1]):.3f}" for value in (e.get("per_replicate") or "").split(",")
                        if ":" in value)
        lines.append(f"| `{row['run']}` | {_mean_se(e, 'exploitability')} ({e.get('replicates', '?')}) | {per or '—'} "
                     f"| {_mean_se(f, 'final_analogue_exploitability', 4)} | {_mean_se(f, 'analogue_gap', 4)} "
                     f"| {_mean_se(v, 'meta_nash', 2)} | {_mean_se(v, 'pool_exploitability')} "
                     f"| {_mean_se(v, 'nash_averaged')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from linepo.errors import InputError

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m linepo.evaluation.methods RESULTS_SUMMARY_DIR", file=sys.stderr)
        return 2
    try:
        print(format_methods(methods_rows(args[0])), end="")
    except InputError as error:
        print(f"linepo.evaluation.methods: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
