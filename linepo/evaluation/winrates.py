"""Evaluation: pairwise win rates between checkpoints' generations, with bootstrap standard
errors, and the AlpacaEval export (paper §5.2); Figure 3's curves and the summary table are
:mod:`linepo.evaluation.summary`.

A *comparison* judges every prompt's two outputs (sample i of A against sample i of B) in
both orders, so a judge's position bias cancels: P(A ≻ B) = ½ (P(A ≻ B | A shown first) +
1 − P(B ≻ A | B shown first)). The (soft) win rate is the mean over prompts of that
probability (ties count ½: the synthetic oracle gives ½ within a category, an LM judge ½ to
identical outputs); its standard error is the std of the mean over bootstrap resamples of
prompts. The *hard* win rate scores each row 1, 0 or ½ as P(A ≻ B) is above, below or
exactly ½ (the paper's public code reports both; Table 2 does not say which), averaged the
same way. Sample i of A and of B must be drawn independently (each generation has its own
seed, :meth:`linepo.workflow.evalplan.EvalPlan.generation_seed`): shared sampling noise couples them
and biases both rates.

    linepo compare --a a.parquet --b b.parquet --judge-config '{"type": "synthetic"}' --out ab.parquet
    linepo win-rates --spec '{...}' --csv M.csv --se-csv SE.csv --hard-csv H.csv --figure M.png
    linepo alpaca-export --generations g.parquet --prompts eval.parquet --generator LINE-PO --out model_outputs.json

Numpy and pyarrow only: torch is imported only when an LM judge is built.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from linepo.errors import InputError


# ----------------------------------------------------------------------------- judging


def _by_key(table, path) -> dict[tuple[str, int], dict]:
    rows = {}
    for row in table.to_pylist():
        key = (row["prompt_id"], int(row["sample_index"]))
        if key in rows:
            raise InputError(f"{path}: prompt {row['prompt_id']} sample {row['sample_index']} appears twice")
        rows[key] = row
    return rows


def compare(rows_a: dict, rows_b: dict, judge, *, name_a: str = "a", name_b: str = "b") -> list[dict]:
    """Judge every (prompt, sample) that both generations answered, in both orders.

    Args:
        rows_a, rows_b: ``{(prompt_id, sample_index): samples row}`` of the two generations.

    Returns:
        rows of the "comparisons" artefact, in prompt then sample order of ``rows_a``.

    Raises:
        InputError: the generations answered different prompts or sample counts (named),
            or the judge gave a probability outside [0, 1] (naming the prompt and order).
    """
    from linepo.stages.judges import JudgeError

    missing = [k for k in rows_a if k not in rows_b] or [k for k in rows_b if k not in rows_a]
    if missing:
        pid, index = missing[0]
        raise InputError(f"{name_a} and {name_b} answer different prompts: prompt {pid} sample {index} "
                         f"is in one only ({len(missing)} such)")
    keys = list(rows_a)
    prompts = [rows_a[k]["prompt"] for k in keys]
    a = [rows_a[k]["response"] for k in keys]
    b = [rows_b[k]["response"] for k in keys]
    n = len(keys)
    try:  # one call: an LM judge batches (and de-duplicates) both orders together
        prob, failed = judge.probabilities(prompts + prompts, a + b, b + a)
    except JudgeError as err:
        match = re.search(r"comparison (\d+)", str(err))
        i = int(match.group(1)) if match else 0
        first = name_a if i < n else name_b
        pid, index = keys[i % n]
        raise InputError(f"judge {getattr(judge, 'name', 'judge')!r}: P(first ≻ second) = "
                         f"{_bad_value(str(err))} is outside [0, 1] for prompt {pid} sample {index} "
                         f"({first} shown first); no comparison was written") from None
    a_first, b_first = prob[:n], prob[n:]
    any_failed = failed[:n] | failed[n:]
    combined = np.where(any_failed, np.nan, 0.5 * (a_first + 1.0 - b_first))
    reasons = list(getattr(judge, "last_reasons", None) or [None] * (2 * n))
    return [
        {"prompt_id": k[0], "sample_index": k[1],
         "prob_a_first": None if failed[i] else float(a_first[i]),
         "prob_b_first": None if failed[n + i] else float(b_first[i]),
         "prob_a_wins": None if any_failed[i] else float(combined[i]),
         "failed": bool(any_failed[i]),
         "failure": (reasons[i] or reasons[n + i]) if any_failed[i] else None}
        for i, k in enumerate(keys)
    ]


def _bad_value(message: str) -> str:
    match = re.search(r"= (\S+) for comparison", message)
    return match.group(1) if match else "a value"


def compare_files(path_a, path_b, judge_config: dict, out, *, source: str = "--judge-config", judge=None) -> dict:
    """Read two generations, judge them (:func:`compare`), write the comparisons file atomically.

    ``judge``: the judge of ``judge_config``, built already (a batch of comparisons loads it
    once, :mod:`linepo.evaluation.batches`); its failure count restarts here, so the file
    records this pair's failures only, as with a judge of its own.
    """
    from linepo.stages.judges import make_judge
    from linepo.schemas import read_table, write_table

    rows_a = _by_key(read_table(path_a, "samples"), path_a)
    rows_b = _by_key(read_table(path_b, "samples"), path_b)
    if judge is None:
        judge = make_judge(judge_config, source=source)
    else:
        judge.reset_failures()
    rows = compare(rows_a, rows_b, judge, name_a=str(path_a), name_b=str(path_b))
    failed = sum(r["failed"] for r in rows)
    valid = [r["prob_a_wins"] for r in rows if not r["failed"]]
    meta = {"a": str(path_a), "b": str(path_b), "judge": judge_config, "failed": failed,
            "max_failed_fraction": judge.max_failed_fraction}
    if failed:
        meta["failure_summary"] = judge.failure_summary()
    write_table(rows, out, "comparisons", metadata=meta, inputs=[path_a, path_b])
    return {"comparisons": len(rows), "failed": failed,
            "win_rate_a": float(np.mean(valid)) if valid else None}


# ----------------------------------------------------------------------------- win rates


def hard_score(p: float) -> float:
    """1, 0 or ½ as P(a ≻ b) is above, below or exactly ½: deterministic, so reruns agree."""
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def per_prompt(table, *, hard: bool = False) -> dict[str, float]:
    """Mean P(a ≻ b) (``hard``: mean :func:`hard_score`) per prompt over its non-failed
    samples (prompts with none are dropped)."""
    sums, counts = defaultdict(float), defaultdict(int)
    columns = table.to_pydict() if hasattr(table, "to_pydict") else table
    for pid, p, failed in zip(columns["prompt_id"], columns["prob_a_wins"], columns["failed"]):
        if not failed and p is not None:
            sums[pid] += hard_score(p) if hard else p
            counts[pid] += 1
    return {pid: sums[pid] / counts[pid] for pid in sums}


def comparison_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")


def bootstrap_se(values, resamples: int, seed: int) -> float:
    """Standard error of the mean of ``values`` from ``resamples`` bootstrap resamples."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))  # (B, N)
    return float(values[idx].mean(axis=1).std(ddof=1))


def win_rate(table, *, a_is_row: bool, resamples: int, seed: int, max_failed_fraction: float | None = None) -> dict:
    """Row's win rate against column from one comparison table: soft and hard mean and SE
    (the same prompt resamples for both), and the counts of judged and failed comparisons.

    A table whose share of failed comparisons is above ``max_failed_fraction`` has no win
    rate (nan, ``missing``): what is left would be mostly identical-text ties, which read as 50%.
    """
    failed = int(sum(table.column("failed").to_pylist())) if hasattr(table, "column") else 0
    judged = int(table.num_rows) if hasattr(table, "num_rows") else len(table["failed"])
    if max_failed_fraction is not None and judged and failed / judged > max_failed_fraction:
        nan = float("nan")
        return {"win_rate": nan, "se": nan, "hard_win_rate": nan, "hard_se": nan, "prompts": 0,
                "judged": judged, "failed": failed, "missing": True}
    out = {}
    for hard, prefix in ((False, ""), (True, "hard_")):
        values = per_prompt(table, hard=hard)
        p = np.array([values[k] for k in sorted(values)])
        if not a_is_row:
            p = 1.0 - p
        out[prefix + "win_rate"] = float(p.mean()) if p.size else float("nan")
        out[prefix + "se"] = bootstrap_se(p, resamples, seed)
    return {"win_rate": out["win_rate"], "se": out["se"], "hard_win_rate": out["hard_win_rate"],
            "hard_se": out["hard_se"], "prompts": int(p.size), "judged": judged, "failed": failed,
            "missing": not p.size}


def win_rate_matrix(checkpoints: list[dict], comparisons: dict, *, resamples: int = 1000, seed: int = 0):
    """The row-vs-column win-rate matrix (fractions) and its standard errors.

    Args:
        checkpoints: ``[{"name", "label", "generation"}]`` in table order.
        comparisons: ``{comparison id: {"a": generation, "b": generation, "table": pyarrow table}}``,
            optionally with the judge's ``max_failed_fraction`` (a cell above it is nan) and
            ``failure_summary``.

    Returns:
        ``(labels, M, SE, pairs)``: M[i][j] = P(row i ≻ column j) (diagonal ½, SE 0),
        M + Mᵀ = 1 exactly, and one dict per ordered pair with counts and the hard win
        rate and its SE (:func:`pair_matrix` makes their matrices).

    Raises:
        InputError: a pair of checkpoints has no comparison.
    """
    by_pair = {}
    for cid, c in comparisons.items():
        by_pair[(c["a"], c["b"])] = (cid, c["table"])
    k = len(checkpoints)
    m, se = np.full((k, k), 0.5), np.zeros((k, k))
    pairs = []
    for i, row in enumerate(checkpoints):
        for j, col in enumerate(checkpoints):
            if i == j or row["generation"] == col["generation"]:
                if i != j:
                    pairs.append({"row": row["label"], "column": col["label"], "win_rate": 0.5, "se": 0.0,
                                  "hard_win_rate": 0.5, "hard_se": 0.0, "prompts": 0, "judged": 0, "failed": 0,
                                  "missing": False, "comparison": "", "failure_summary": ""})
                continue
            a, b = sorted((row["generation"], col["generation"]))
            if (a, b) not in by_pair:
                raise InputError(f"no comparison of {row['label']} and {col['label']} (generations {a}, {b})")
            cid, table = by_pair[(a, b)]
            limit = comparisons[cid].get("max_failed_fraction")
            result = win_rate(table, a_is_row=row["generation"] == a, resamples=resamples,
                              seed=comparison_seed(seed, cid), max_failed_fraction=limit)
            m[i, j], se[i, j] = result["win_rate"], result["se"]
            pairs.append({"row": row["label"], "column": col["label"], **result, "comparison": cid,
                          "failure_summary": comparisons[cid].get("failure_summary") or ""})
    return [c["label"] for c in checkpoints], m, se, pairs


def pair_matrix(labels, pairs, key: str) -> np.ndarray:
    """The matrix of one column of :func:`win_rate_matrix`'s pairs (e.g. ``hard_win_rate``);
    the diagonal is ½ for a rate and 0 for an SE."""
    index = {label: i for i, label in enumerate(labels)}
    m = np.full((len(labels), len(labels)), 0.0 if key.endswith("se") else 0.5)
    for pair in pairs:
        m[index[pair["row"]], index[pair["column"]]] = pair[key]
    return m


def matrix_csv(labels, m, *, avg: bool = True) -> str:
    """CSV of a matrix in percent (2 decimals), with the row mean (diagonal included, as Table 2) as Avg.

    A missing cell (nan: too many failed comparisons) is empty, and so is its row's Avg.
    """
    def cell(v):
        return "" if np.isnan(v) else f"{100 * v:.2f}"

    header = ["row/column", *labels] + (["Avg"] if avg else [])
    lines = [",".join(_csv(h) for h in header)]
    for label, row in zip(labels, m):
        values = [cell(v) for v in row] + ([cell(np.mean(row))] if avg else [])
        lines.append(",".join([_csv(label), *values]))
    return "\n".join(lines) + "\n"


def counts_csv(labels, pairs) -> str:
    """CSV of judged/failed comparisons per ordered pair ("800/3"), the diagonal "-"."""
    index = {label: i for i, label in enumerate(labels)}
    cells = [["-" if i == j else "" for j in range(len(labels))] for i in range(len(labels))]
    for pair in pairs:
        cells[index[pair["row"]]][index[pair["column"]]] = f"{pair['judged']}/{pair['failed']}"
    lines = [",".join(["row/column (judged/failed)", *map(_csv, labels)])]
    lines += [",".join([_csv(label), *row]) for label, row in zip(labels, cells)]
    return "\n".join(lines) + "\n"


def read_counts_csv(path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The labels and the judged and failed matrices of a :func:`counts_csv` file (diagonal 0)."""
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    labels = rows[0][1:]
    judged, failed = np.zeros((len(labels), len(labels)), int), np.zeros((len(labels), len(labels)), int)
    for i, row in enumerate(rows[1:]):
        for j, cell in enumerate(row[1:1 + len(labels)]):
            if "/" in cell:
                judged[i, j], failed[i, j] = map(int, cell.split("/"))
    return labels, judged, failed


def _csv(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ',"\n') else text


def read_matrix_csv(path) -> tuple[list[str], np.ndarray]:
    """The labels and values (percent) of a :func:`matrix_csv` file, Avg column dropped."""
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    labels = rows[0][1:]
    if labels and labels[-1] == "Avg":
        labels = labels[:-1]
    values = np.array([[float(v) if v != "" else np.nan for v in r[1:1 + len(labels)]] for r in rows[1:]])
    return labels, values


# ----------------------------------------------------------------------------- tables


def tsv(rows: list[dict]) -> str:
    """Rows as TSV; floats to 4 decimals, None as empty."""
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return "nan" if np.isnan(v) else f"{v:.4f}"
        return str(v)

    return "\n".join(["\t".join(keys)] + ["\t".join(cell(r[k]) for k in keys) for r in rows]) + "\n"


# ----------------------------------------------------------------------------- AlpacaEval


def alpaca_eval_records(generation, prompts, generator: str, *, prompts_meta: dict | None = None) -> list[dict]:
    """AlpacaEval ``model_outputs.json`` records, in eval prompt order: sample 0 of each prompt.

    ``dataset`` is the AlpacaEval subset when the prompts file recorded it (its metadata
    ``datasets``: prompt_id → subset), else the prompts' source.

    Raises:
        InputError: a prompt has no sample 0 in the generation.
    """
    subsets = (prompts_meta or {}).get("datasets") or {}
    outputs = {r["prompt_id"]: r["response"] for r in generation.to_pylist() if r["sample_index"] == 0}
    records = []
    for row in prompts.to_pylist():
        if row["prompt_id"] not in outputs:
            raise InputError(f"generation has no output for prompt {row['prompt_id']} (dropped by sampling as too "
                             "long for the model? its log says; lower max_prompt_chars to drop it from the prompts)")
        records.append({"instruction": row["prompt"], "output": outputs[row["prompt_id"]],
                        "generator": generator, "dataset": subsets.get(row["prompt_id"], row["source"])})
    return records


def write_text(path, text: str) -> None:
    from linepo.schemas import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, value) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
