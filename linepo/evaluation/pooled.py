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

    linepo exploitability-pooled --table 0=results/summary/replicates/exploitability-0.tsv \\
        --table 1=results/summary/replicates/exploitability-1.tsv --out results/summary/exploitability.tsv
    linepo prox-fidelity-pooled --steps 0=S0.tsv --runs 0=R0.tsv --tsv pooled.tsv --runs-tsv runs.tsv
"""

from __future__ import annotations

import csv
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
