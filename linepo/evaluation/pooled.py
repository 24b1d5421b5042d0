"""Tables pooled over replicates (``replicates:`` in the config; :mod:`linepo.workflow.replicates`).

Each replicate of a config writes its own tables (results/summary/replicates/): the
exploitability table (one row per run, and SFT) and the Prox-fidelity tables (one row per step,
one per run). The pooled table has one row per row of those — matched by run (and step) — and
for each number the **mean over replicates** and its **standard error** ``<column>_se`` = sample
standard deviation (n − 1 in the denominator) / √n, where n (``replicates``) is the number of
replicates; with one replicate the standard error is ``nan``. It measures how much a number moves
between independent realisations of the whole pipeline (the seeds ``replicates.vary`` names),
not the uncertainty within one (the per-replicate ``stderr``: over prompts, Monte Carlo only).
Pooled numbers are means of the per-replicate tables' printed values, so a pooled table is
exactly what a reader computes from the per-replicate files.

The evaluation's tables (win-rate matrices, their pairs and counts, Figure 3's curves, the
summary table; :mod:`linepo.workflow.evalplan`) are pooled the same way, cell by cell, the
standard error over replicates taking the place of the within-replicate bootstrap one (which
stays in the per-replicate files); a cell missing in any replicate is missing. With one
replicate the pooled evaluation files are replicate 0's, byte for byte.

    linepo exploitability-pooled --table 0=results/summary/replicates/exploitability-0.tsv \\
        --table 1=results/summary/replicates/exploitability-1.tsv --out results/summary/exploitability.tsv
    linepo prox-fidelity-pooled --steps 0=S0.tsv --runs 0=R0.tsv --tsv pooled.tsv --runs-tsv runs.tsv
    linepo win-rates-pooled --spec '{"replicates": {"0": {"csv": ..., ...}, "1": {...}}}' --csv M.csv ...
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from linepo.errors import InputError

#: Columns of the pooled exploitability table (results/summary/exploitability.tsv).
EXPLOITABILITY_COLUMNS = ("run", "exploitability", "exploitability_se", "replicates", "method",
                          "category_distribution", "per_replicate")
#: Numbers of a Prox-fidelity step row that are pooled (each with its _se column).
STEP_NUMBERS = ("kl_to_target", "kl_to_target_max", "tv_to_target", "measured_exploitability",
                "target_exploitability", "analogue_exploitability", "kl_to_analogue", "start_exploitability")
#: Columns of a Prox-fidelity step row that identify it or are equal in every replicate.
STEP_KEPT = ("run", "algorithm", "step", "round", "split", "loss", "eta", "eta_tau", "method")
#: Numbers of a Prox-fidelity run row that are pooled (means).
RUN_NUMBERS = ("median_kl_to_target", "max_kl_to_target", "median_tv_to_target", "start_exploitability",
               "final_measured_exploitability", "final_analogue_exploitability", "analogue_gap",
               "final_target_exploitability")
#: Those whose standard error the pooled per-run table shows, each beside its mean (the printed summary).
RUN_SE = ("median_kl_to_target", "final_measured_exploitability", "final_analogue_exploitability", "analogue_gap")


def mean_se(values) -> tuple[float, float]:
    """The mean of ``values`` and its standard error: sample std (ddof 1) / √n; nan for n = 1.
    A nan value makes both nan (a replicate whose number is unavailable is never skipped)."""
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        raise InputError("mean_se: no values")
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
    return mean, se


def read_tsv(path, what: str = "table") -> list[dict]:
    """A tab-separated table with a header, as dicts of strings.

    Raises:
        InputError: the file is missing or empty.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    reader = csv.DictReader(text.splitlines(), delimiter="\t")
    if not reader.fieldnames:
        raise InputError(f"{path}: empty, not a {what}")
    return list(reader)


def matched(tables: dict[int, list[dict]], key) -> list[dict[int, dict]]:
    """The rows of every replicate, matched by the ``key`` columns, in the first replicate's order.

    Raises:
        InputError: no replicates, a missing key column, or replicates whose rows differ.
    """
    if not tables:
        raise InputError("pooling: no replicate tables")
    keyed = {}
    for replicate, rows in tables.items():
        try:
            keyed[replicate] = {tuple(row[k] for k in key): row for row in rows}
        except KeyError as err:
            raise InputError(f"replicate {replicate}: no column {err.args[0]}") from None
    first, *others = keyed
    for replicate in others:
        if list(keyed[replicate]) != list(keyed[first]):
            extra = set(keyed[replicate]) ^ set(keyed[first])
            named = sorted(extra)[0] if extra else "order"
            raise InputError(f"replicate {replicate}: its rows are not replicate {first}'s ({named})")
    return [{r: keyed[r][k] for r in keyed} for k in keyed[first]]


def _same(rows: dict[int, dict], column: str) -> str:
    values = list(dict.fromkeys(row[column] for row in rows.values()))
    return values[0] if len(values) == 1 else ",".join(values)


def pool(tables: dict[int, list[dict]], key, numbers, kept=()) -> list[dict]:
    """One row per matched row: ``kept`` columns (joined with "," where replicates differ),
    ``replicates`` (n), and for each of ``numbers`` its mean and ``<number>_se``."""
    out = []
    for rows in matched(tables, key):
        row = {column: _same(rows, column) for column in (*key, *kept)}
        row["replicates"] = len(rows)
        for number in numbers:
            row[number], row[f"{number}_se"] = mean_se(r[number] for r in rows.values())
        out.append(row)
    return out


# ----------------------------------------------------------------------------- exploitability


def parse_mix(text: str) -> dict[str, float]:
    """``"brief 0.200, plain 0.500"`` (the exploitability table's category_distribution) as a dict."""
    mix = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.rpartition(" ")
        mix[name] = float(value)
    return mix


def pool_exploitability(tables: dict[int, list[dict]]) -> list[dict]:
    """Per run (and SFT): the mean exploitability and its standard error over replicates, the
    mean category mix with its standard errors, and every replicate's value."""
    out = []
    for row, rows in zip(pool(tables, ("run",), ("exploitability",), ("method",)), matched(tables, ("run",))):
        mixes = [parse_mix(r["category_distribution"]) for r in rows.values()]
        names = list(dict.fromkeys(name for mix in mixes for name in mix))
        row["category_distribution"] = {name: mean_se(mix.get(name, float("nan")) for mix in mixes) for name in names}
        row["per_replicate"] = ",".join(f"{r}:{float(v['exploitability']):.4f}" for r, v in rows.items())
        out.append(row)
    return out


def format_exploitability(rows: list[dict]) -> str:
    """The pooled exploitability table: exploitability and its SE with 4 decimals, the category
    mix as ``brief 0.200 ± 0.004, ...`` (without ± for one replicate)."""
    lines = ["\t".join(EXPLOITABILITY_COLUMNS)]
    for row in rows:
        mix = ", ".join(f"{name} {mean:.3f}" + ("" if math.isnan(se) and row["replicates"] == 1 else f" ± {se:.3f}")
                        for name, (mean, se) in row["category_distribution"].items())
        lines.append("\t".join([row["run"], f"{row['exploitability']:.4f}", f"{row['exploitability_se']:.4f}",
                                str(row["replicates"]), row["method"], mix, row["per_replicate"]]))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- Prox fidelity


def step_columns(columns) -> tuple:
    """The pooled per-step table's columns: ``columns`` (a run's per-step table's) without the
    policy (it differs by replicate), then ``replicates`` and every pooled number's ``_se``."""
    return (*[c for c in columns if c != "policy"], "replicates", *[f"{n}_se" for n in STEP_NUMBERS])


def run_columns(columns) -> tuple:
    """The pooled per-run table's columns: ``columns`` (a replicate's per-run table's) with
    ``replicates`` after the algorithm and each of :data:`RUN_SE`'s ``_se`` after its mean."""
    out = []
    for column in columns:
        out += [column] + (["replicates"] if column == "algorithm" else []) + \
            ([f"{column}_se"] if column in RUN_SE else [])
    return tuple(out)


def pool_prox_fidelity(steps: dict[int, list[dict]], runs: dict[int, list[dict]]) -> tuple[list[dict], list[dict]]:
    """The pooled per-step and per-run Prox-fidelity rows; a pooled run's ``kl_per_step`` lists its
    pooled steps' mean KL to the target."""
    if set(steps) != set(runs):
        raise InputError(f"prox fidelity: step tables of replicates {sorted(steps)}, run tables of {sorted(runs)}")
    pooled_steps = pool(steps, ("run", "step"), STEP_NUMBERS, STEP_KEPT[1:2] + STEP_KEPT[3:])
    pooled_runs = pool(runs, ("run",), RUN_NUMBERS, ("algorithm", "steps"))
    for row in pooled_runs:
        row["kl_per_step"] = ",".join(f"{r['kl_to_target']:.2g}" for r in pooled_steps if r["run"] == row["run"])
    return pooled_steps, pooled_runs


# ----------------------------------------------------------------------------- win rates, curves, summary
# The evaluation's per-replicate files (results/summary/replicates/win_rates-<r>.csv, ...) pooled
# cell by cell: the mean of the printed values, and the standard error over replicates in
# place of the within-replicate bootstrap one. A cell missing in any replicate (too many failed
# comparisons: empty, or nan) is missing in the pool. With one replicate the pooled files are
# replicate 0's, byte for byte (the commands copy them: linepo.commands.pooled).


def read_matrix(path) -> tuple[list[str], list[str], np.ndarray]:
    """A win-rate CSV (:func:`linepo.evaluation.winrates.matrix_csv`) as its header (every cell,
    the corner included), row labels and values (percent, nan where empty; Avg included).

    Raises:
        InputError: the file is missing or has no rows.
    """
    try:
        rows = list(csv.reader(Path(path).read_text().splitlines()))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    if len(rows) < 2:
        raise InputError(f"{path}: no rows, not a win-rate matrix")
    values = np.array([[float(v) if v != "" else np.nan for v in row[1:]] for row in rows[1:]], dtype=float)
    return rows[0], [row[0] for row in rows[1:]], values


def pool_matrices(matrices: dict[int, tuple]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``{replicate: read_matrix(...)}`` → (header, labels, mean, se) cell by cell (Avg too):
    the mean over replicates and its standard error (sample std / √n; nan for one); nan where
    any replicate's cell is.

    Raises:
        InputError: a replicate's checkpoints (header or rows) are not the first's.
    """
    (first, (header, labels, _)), *_ = matrices.items()
    for replicate, (other_header, other_labels, values) in matrices.items():
        if other_header != header or other_labels != labels:
            raise InputError(f"replicate {replicate}: its checkpoints {other_labels} are not replicate {first}'s "
                             f"{labels}")
    stack = np.stack([values for _, _, values in matrices.values()])
    mean = stack.mean(axis=0)
    se = stack.std(axis=0, ddof=1) / math.sqrt(len(stack)) if len(stack) > 1 else np.full(mean.shape, np.nan)
    return header, labels, mean, se


def format_matrix(header, labels, values) -> str:
    """A matrix as :func:`linepo.evaluation.winrates.matrix_csv` writes one (percent, 2 decimals,
    a missing cell empty); ``header``'s length says how many columns (Avg or not)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for label, row in zip(labels, values):
        writer.writerow([label] + ["" if math.isnan(v) else f"{v:.2f}" for v in row[:len(header) - 1]])
    return out.getvalue()


def pool_counts(counts: dict[int, tuple]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``{replicate: read_counts_csv(...)}`` → (labels, judged, failed) summed over replicates
    (a comparison that two replicates share counts once for each)."""
    labels = next(iter(counts.values()))[0]
    for replicate, (other, _, _) in counts.items():
        if other != labels:
            raise InputError(f"replicate {replicate}: its counts' checkpoints {other} are not {labels}")
    return labels, sum(judged for _, judged, _ in counts.values()), sum(failed for _, _, failed in counts.values())


def _joined(rows: dict[int, dict], column: str) -> str:
    """A text column: its value when every replicate agrees, else ``r:value`` for each."""
    values = [row[column] for row in rows.values()]
    return values[0] if len(set(values)) == 1 else ",".join(f"{r}:{row[column]}" for r, row in rows.items())


def _number(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def pool_pairs(tables: dict[int, list[dict]]) -> list[dict]:
    """Per ordered pair of checkpoints (``win_rates_pairs.tsv``): the mean soft and hard win rate
    and their standard errors over replicates, judged and failed summed, missing where any
    replicate's is, and each replicate's rate and comparison."""
    out = []
    for rows in matched(tables, ("row", "column")):
        first = next(iter(rows.values()))
        row = {"row": first["row"], "column": first["column"]}
        row["win_rate"], row["se"] = mean_se(r["win_rate"] for r in rows.values())
        row["hard_win_rate"], row["hard_se"] = mean_se(r["hard_win_rate"] for r in rows.values())
        row.update(replicates=len(rows), judged=sum(int(r["judged"]) for r in rows.values()),
                   failed=sum(int(r["failed"]) for r in rows.values()),
                   missing=any(r["missing"] == "True" for r in rows.values()),
                   per_replicate=",".join(f"{k}:{r['win_rate']}" for k, r in rows.items()),
                   comparisons=",".join(f"{k}:{r['comparison']}" for k, r in rows.items()))
        out.append(row)
    return out


#: Columns of the pooled curves table (results/summary/curves.tsv with replicates).
CURVE_COLUMNS = ("run", "label", "iteration", "round", "split", "win_rate_vs_sft", "se", "judged", "failed",
                 "avg_tokens", "avg_tokens_se", "round_length", "replicates")


def pool_curves(tables: dict[int, list[dict]]) -> list[dict]:
    """Per run and iteration of every replicate's curves table: the mean win rate against SFT
    (``se``: its standard error over replicates), the mean output length and its standard error,
    judged and failed summed."""
    out = []
    for rows in matched(tables, ("run", "iteration")):
        first = next(iter(rows.values()))
        win, win_se = mean_se(r["win_rate_vs_sft"] for r in rows.values())
        tokens, tokens_se = mean_se(r["avg_tokens"] for r in rows.values())
        out.append({"run": first["run"], "label": _same(rows, "label"), "iteration": int(first["iteration"]),
                    "round": int(first["round"]), "split": _same(rows, "split"), "win_rate_vs_sft": win, "se": win_se,
                    "judged": sum(int(r["judged"]) for r in rows.values()),
                    "failed": sum(int(r["failed"]) for r in rows.values()), "avg_tokens": tokens,
                    "avg_tokens_se": tokens_se, "round_length": int(first["round_length"]), "replicates": len(rows)})
    return out


#: Numbers of an evaluation.tsv row that are pooled (mean and ``_se``), in their order; a
#: replicate's table has the hard ones only with a hard matrix.
SUMMARY_NUMBERS = ("avg_win_rate", "worst_win_rate", "avg_hard_win_rate", "worst_hard_win_rate", "meta_nash",
                   "pool_exploitability", "nash_averaged", "avg_tokens", "exploitability")


def pool_summary(tables: dict[int, list[dict]]) -> list[dict]:
    """Per checkpoint of every replicate's evaluation.tsv: each number's mean over replicates and
    standard error (the worst win rate: the mean of each replicate's worst, which may be against
    another checkpoint: ``worst_against`` lists each then), missing cells, judged and failed
    summed, the category mix as mean ± SE; exploitability empty where no replicate has one.
    The meta-game columns are each replicate's (its own pool of checkpoints) pooled the same
    way: the mean Nash mass is the mixture of the replicates' Nash policies (still sums to 1),
    not the Nash of the pooled matrix — one replicate's game per realisation of the pipeline,
    so that ``_se`` says how much the meta-game moves between realisations."""
    out = []
    for rows in matched(tables, ("checkpoint",)):
        first = next(iter(rows.values()))
        row = {"checkpoint": first["checkpoint"], "label": _same(rows, "label"), "replicates": len(rows)}
        for number in (n for n in SUMMARY_NUMBERS if n in first):
            values = [r[number] for r in rows.values()]
            if all(v == "" for v in values):
                row[number], row[f"{number}_se"] = None, None
            else:
                row[number], row[f"{number}_se"] = mean_se(_number(v) for v in values)
            if number == "worst_win_rate":
                row["worst_against"] = _joined(rows, "worst_against")
                row["missing_cells"] = sum(int(r["missing_cells"]) for r in rows.values())
            if number == ("worst_hard_win_rate" if "worst_hard_win_rate" in first else "worst_win_rate") \
                    and "judged" in first:
                row["judged"] = sum(int(r["judged"]) for r in rows.values())
                row["failed"] = sum(int(r["failed"]) for r in rows.values())
        mixes = [parse_mix(r.get("category_distribution", "")) for r in rows.values()]
        names = list(dict.fromkeys(name for mix in mixes for name in mix))
        row["category_distribution"] = ", ".join(
            "{} {:.3f} ± {:.3f}".format(name, *mean_se(mix.get(name, float("nan")) for mix in mixes)) for name in names)
        out.append(row)
    return out
