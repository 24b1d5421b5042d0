"""Tables pooled over replicates (linepo.evaluation.pooled): mean and standard error per row
(and, for the evaluation's tables, per cell; with one replicate those are its files as they are).

    linepo exploitability-pooled --table 0=results/summary/replicates/exploitability-0.tsv \
        --table 1=results/summary/replicates/exploitability-1.tsv --out results/summary/exploitability.tsv
    linepo prox-fidelity-pooled --steps 0=S0.tsv --runs 0=R0.tsv --steps 1=S1.tsv --runs 1=R1.tsv \
        --tsv results/summary/prox_fidelity.tsv --runs-tsv results/summary/prox_fidelity_runs.tsv --figure f.png
    linepo win-rates-pooled --spec '{"replicates": {"0": {"csv": "M0.csv", ...}, "1": {...}}}' --csv M.csv \
        --se SE.csv --hard H.csv --hard-se HSE.csv --counts C.csv --pairs P.tsv --figure M.png
    linepo eval-curves-pooled --spec SPEC --tsv curves.tsv --figure curves.png
    linepo eval-summary-pooled --spec SPEC --out evaluation.tsv
"""

from __future__ import annotations

import sys
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
    register_evaluation(subparsers)


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


# ----------------------------------------------------------------------------- the evaluation's

_EVAL_SPEC = ('JSON or a JSON file: {"replicates": {"R": {%s}}}: each replicate\'s files '
              "(what linepo %s wrote for it)")
_EVAL_NOTE = ("With one replicate the outputs are replicate 0's files, byte for byte (the bootstrap "
              "standard errors over prompts); with n ≥ 2, each cell is the mean of the replicates' printed "
              "values and the standard errors are over replicates (the sample standard deviation, n − 1, over √n); a cell "
              "missing in any replicate is missing.")


def register_evaluation(subparsers) -> None:
    p = subparsers.add_parser(
        "win-rates-pooled", help="pool per-replicate win-rate matrices: mean ± standard error per cell",
        description="linepo win-rates-pooled: the win-rate matrices (soft, hard), counts, pairs and heatmap "
        f"of every replicate pooled cell by cell. {_EVAL_NOTE} Counts are summed.")
    p.add_argument("--spec", required=True, help=_EVAL_SPEC % ("csv, se, hard, hard_se, counts, pairs, figure",
                                                               "win-rates"))
    for flag, what in (("--csv", "the mean soft win rates (%%) with Avg"), ("--se", "their standard errors"),
                       ("--hard", "the mean hard win rates with Avg"), ("--hard-se", "their standard errors"),
                       ("--counts", "judged/failed per cell"), ("--pairs", "per ordered pair (TSV)"),
                       ("--figure", "the heatmap (PNG)")):
        p.add_argument(flag, required=True, type=Path, help=what)
    p.set_defaults(func=run_win_rates, outputs=("csv", "se", "hard", "hard_se", "counts", "pairs", "figure"))

    p = subparsers.add_parser(
        "eval-curves-pooled", help="pool per-replicate Figure 3 curves: mean ± standard error per point",
        description="linepo eval-curves-pooled: per run and iteration of every replicate's curves table, the "
        f"mean win rate against SFT and output length with their standard errors, drawn with ± SE bands. {_EVAL_NOTE}")
    p.add_argument("--spec", required=True, help=_EVAL_SPEC % ("tsv, figure", "eval-curves"))
    p.add_argument("--tsv", required=True, type=Path)
    p.add_argument("--figure", required=True, type=Path)
    p.set_defaults(func=run_curves, outputs=("tsv", "figure"))

    p = subparsers.add_parser(
        "eval-summary-pooled", help="pool per-replicate evaluation tables: mean ± standard error per checkpoint",
        description="linepo eval-summary-pooled: per checkpoint of every replicate's evaluation table, each "
        f"number's mean and standard error (the worst win rate: the mean of each replicate's worst; the meta-game "
        f"columns: the mean of each replicate's, whose game is its own checkpoints). {_EVAL_NOTE}")
    p.add_argument("--spec", required=True, help=_EVAL_SPEC % ("out", "eval-summary"))
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run_summary, outputs=("out",))


def _replicate_files(args) -> dict[int, dict]:
    """The spec's replicates (sorted by number), each with every file ``args.outputs`` names."""
    from linepo.sources import json_object_argument

    spec, source = json_object_argument(args.spec, "--spec")
    replicates = spec.get("replicates")
    if not isinstance(replicates, dict) or not replicates:
        raise InputError(f'{source}: give {{"replicates": {{"0": {{...}}, ...}}}}')
    out = {}
    for key, files in replicates.items():
        if not str(key).isdigit() or not isinstance(files, dict):
            raise InputError(f"{source}: replicate {key!r}: expected a replicate number and its files")
        missing = [name for name in args.outputs if name not in files]
        if missing:
            raise InputError(f"{source}: replicate {key}: no {', '.join(missing)}")
        out[int(key)] = files
    return dict(sorted(out.items()))


def _copied(args, replicates: dict[int, dict]) -> bool:
    """One replicate: its files are the outputs, byte for byte (True); else False."""
    from linepo.schemas import atomic_path

    if len(replicates) > 1:
        return False
    (files,) = replicates.values()
    for name in args.outputs:
        try:
            data = Path(files[name]).read_bytes()
        except FileNotFoundError:
            raise InputError(f"{files[name]}: file not found") from None
        with atomic_path(getattr(args, name)) as tmp:
            Path(tmp).write_bytes(data)
    return True


def run_win_rates(args) -> int:
    from linepo.evaluation import pooled
    from linepo.evaluation import winrates as ev
    from linepo.evaluation.figures import heatmap

    replicates = _replicate_files(args)
    if not _copied(args, replicates):
        soft = pooled.pool_matrices({r: pooled.read_matrix(f["csv"]) for r, f in replicates.items()})
        hard = pooled.pool_matrices({r: pooled.read_matrix(f["hard"]) for r, f in replicates.items()})
        labels, judged, failed = pooled.pool_counts({r: _counts(f["counts"]) for r, f in replicates.items()})
        pairs = pooled.pool_pairs({r: pooled.read_tsv(f["pairs"], "pairs table") for r, f in replicates.items()})
        header, rows, k = soft[0], soft[1], len(soft[1])
        heatmap(labels, soft[2][:, :k] / 100, soft[3][:, :k] / 100, args.figure, judged=judged, failed=failed,
                title=f"win rate of row vs column (%): mean ± SE over {len(replicates)} replicates")
        _write(args.se, pooled.format_matrix(header[:k + 1], rows, soft[3]))
        _write(args.hard_se, pooled.format_matrix(hard[0][:k + 1], rows, hard[3]))
        _write(args.hard, pooled.format_matrix(hard[0], rows, hard[2]))
        _write(args.counts, ev.counts_csv(labels, [{"row": a, "column": b, "judged": int(judged[i, j]),
                                                    "failed": int(failed[i, j])}
                                                   for i, a in enumerate(labels) for j, b in enumerate(labels) if i != j]))
        _write(args.pairs, ev.tsv(pairs))
        _write(args.csv, pooled.format_matrix(header, rows, soft[2]))  # last: the file the next rules wait for
    print(Path(args.csv).read_text(), end="")
    return 0


def _counts(path):
    from linepo.evaluation.winrates import read_counts_csv

    try:
        return read_counts_csv(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None


def run_curves(args) -> int:
    from linepo.evaluation import pooled
    from linepo.evaluation import winrates as ev
    from linepo.evaluation.figures import curves

    replicates = _replicate_files(args)
    if not _copied(args, replicates):
        rows = pooled.pool_curves({r: pooled.read_tsv(f["tsv"], "curves table") for r, f in replicates.items()})
        curves(rows, args.figure, title=f"mean ± SE over {len(replicates)} replicates")
        _write(args.tsv, ev.tsv([{c: row[c] for c in pooled.CURVE_COLUMNS} for row in rows]))
    return 0


def run_summary(args) -> int:
    from linepo.evaluation import pooled
    from linepo.evaluation import winrates as ev

    replicates = _replicate_files(args)
    if not _copied(args, replicates):
        _write(args.out, ev.tsv(pooled.pool_summary({r: pooled.read_tsv(f["out"], "evaluation table")
                                                     for r, f in replicates.items()})))
    print(Path(args.out).read_text(), end="", file=sys.stderr)
    return 0
