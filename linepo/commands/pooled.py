"""Tables pooled over replicates (linepo.evaluation.pooled): mean and standard error per row.

    linepo exploitability-pooled --table 0=results/summary/replicates/exploitability-0.tsv \
        --table 1=results/summary/replicates/exploitability-1.tsv --out results/summary/exploitability.tsv
    linepo prox-fidelity-pooled --steps 0=S0.tsv --runs 0=R0.tsv --steps 1=S1.tsv --runs 1=R1.tsv \
        --tsv results/summary/prox_fidelity.tsv --runs-tsv results/summary/prox_fidelity_runs.tsv --figure f.png
"""

from __future__ import annotations

from pathlib import Path

from linepo.errors import InputError

_STANDARD_ERROR = ("the standard error is the sample standard deviation over replicates (n − 1) over √n; "
                   "nan with one replicate")


def register(subparsers) -> None:
    table = subparsers.add_parser(
        "exploitability-pooled", help="pool per-replicate exploitability tables: mean ± standard error per run",
        description="linepo exploitability-pooled: per run (and SFT) of each replicate's exploitability table, "
        "the mean exploitability over replicates, its standard error, the number "
        f"of replicates, the mean category mix ± its standard errors and every replicate's value; {_STANDARD_ERROR}.")
    table.add_argument("--table", action="append", required=True, metavar="R=FILE",
                       help="replicate R's exploitability table (repeat for every replicate)")
    table.add_argument("--out", required=True, help="the pooled TSV to write")
    table.set_defaults(func=run_exploitability)

    fidelity = subparsers.add_parser(
        "prox-fidelity-pooled", help="pool per-replicate prox-fidelity tables: mean ± standard error per step and run",
        description="linepo prox-fidelity-pooled: per step and per run of each replicate's Prox fidelity "
        "tables, every number's mean over replicates and its standard error (the _se columns), and the figure "
        f"with bands of ± one standard error; {_STANDARD_ERROR}.")
    fidelity.add_argument("--steps", action="append", required=True, metavar="R=FILE",
                          help="replicate R's per-step table (prox-fidelity-table --tsv)")
    fidelity.add_argument("--runs", action="append", required=True, metavar="R=FILE",
                          help="replicate R's per-run table (prox-fidelity-table --runs-tsv)")
    fidelity.add_argument("--tsv", required=True, help="the pooled per-step TSV to write")
    fidelity.add_argument("--runs-tsv", required=True, help="the pooled per-run TSV to write")
    fidelity.add_argument("--figure", help="PNG: the pooled KL per step and exploitability, ± SE bands")
    fidelity.set_defaults(func=run_prox_fidelity)


def _tables(items, flag: str, what: str) -> dict[int, list[dict]]:
    from linepo.evaluation.pooled import read_tsv

    tables = {}
    for item in items:
        replicate, sep, path = item.partition("=")
        if not sep or not replicate.isdigit() or not path:
            raise InputError(f"{flag} {item}: expected R=FILE, R a replicate number")
        if int(replicate) in tables:
            raise InputError(f"{flag} {item}: replicate {replicate} given twice")
        tables[int(replicate)] = read_tsv(path, what)
    return tables


def _write(path, text: str) -> None:
    from linepo.schemas import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def run_exploitability(args) -> int:
    from linepo.evaluation import pooled

    text = pooled.format_exploitability(pooled.pool_exploitability(_tables(args.table, "--table",
                                                                           "exploitability table")))
    _write(args.out, text)
    print(text, end="")
    return 0


def run_prox_fidelity(args) -> int:
    from linepo.evaluation import pooled
    from linepo.evaluation import prox_fidelity as pf

    steps, runs = pooled.pool_prox_fidelity(_tables(args.steps, "--steps", "prox-fidelity table"),
                                            _tables(args.runs, "--runs", "prox-fidelity run table"))
    _write(args.tsv, pf.format_tsv(steps, pooled.step_columns(pf.COLUMNS)))
    summary = pf.format_tsv(runs, pooled.run_columns(pf.RUN_COLUMNS))
    _write(args.runs_tsv, summary)
    if args.figure:
        from linepo.evaluation.figures import prox_fidelity

        prox_fidelity(steps, args.figure)
    print(summary, end="")
    return 0
