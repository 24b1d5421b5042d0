"""Figure 3's curve points and the summary table (Table 2's Avg and worst columns) from
the win-rate matrices and comparisons of :mod:`linepo.evaluation.winrates`.

    linepo eval-curves --spec SPEC --tsv curves.tsv --figure curves.png
    linepo eval-summary --spec SPEC --matrix M.csv --hard-matrix H.csv --counts C.csv --out evaluation.tsv
"""

from __future__ import annotations

import numpy as np

from linepo.evaluation.winrates import comparison_seed, win_rate


def mean_length(table) -> float:
    """Average generated tokens per output of a generation (samples) table."""
    tokens = table.column("num_tokens").to_pylist()
    return float(np.mean(tokens)) if tokens else float("nan")


def curve_rows(runs: dict, generations: dict, comparisons: dict, *, resamples: int, seed: int) -> list[dict]:
    """Figure 3's points: per run and iteration, win rate against SFT (± SE) and mean length.

    Args:
        runs: ``{run: {"label", "round_length", "points": [{"iteration", "round", "split",
            "generation", "comparison", "sft_generation"}]}}``.
        generations: ``{generation id: samples table}``.
        comparisons: ``{comparison id: {"table", "max_failed_fraction"}}`` (or the bare table).
    """
    rows = []
    for run, spec in runs.items():
        for point in spec["points"]:
            cid = point["comparison"]
            if cid is None:
                rate = {"win_rate": 0.5, "se": 0.0, "judged": 0, "failed": 0}
            else:
                a_is_policy = point["generation"] < point["sft_generation"]
                entry = comparisons[cid] if isinstance(comparisons[cid], dict) else {"table": comparisons[cid]}
                rate = win_rate(entry["table"], a_is_row=a_is_policy, resamples=resamples,
                                seed=comparison_seed(seed, cid), max_failed_fraction=entry.get("max_failed_fraction"))
            rows.append({"run": run, "label": spec["label"], "iteration": point["iteration"],
                         "round": point["round"], "split": point["split"],
                         "win_rate_vs_sft": rate["win_rate"], "se": rate["se"],
                         "judged": rate["judged"], "failed": rate["failed"],
                         "avg_tokens": mean_length(generations[point["generation"]]),
                         "round_length": spec["round_length"], "generation": point["generation"]})
    return rows


#: The meta-game columns of the summary table, in their order.
META_COLUMNS = ("meta_nash", "pool_exploitability", "nash_averaged")


def summary_rows(labels, m, checkpoints, lengths: dict, exploitability: dict, hard=None, counts=None) -> list[dict]:
    """Per checkpoint: average and worst win rate (robust alignment: ≥ 50% against all), the
    same two of the hard matrix ``hard`` when given (its worst may be against another
    checkpoint), the comparisons judged and failed in its row (``counts``: the judged and
    failed matrices), the meta-game of ``m`` (:mod:`linepo.evaluation.meta_game`: the
    checkpoint's mass in the max-entropy Nash of the pool, its exploitability within the pool
    and its Nash-averaged rating; empty when a cell is missing), length, and, with the
    synthetic oracle, exploitability and category mix."""
    from linepo.evaluation.meta_game import meta_game

    meta = meta_game(m)
    rows = []
    for i, (label, cp) in enumerate(zip(labels, checkpoints)):
        others = [j for j in range(len(labels)) if j != i]
        missing = int(sum(np.isnan(m[i, j]) for j in others))
        # A row with a missing cell has no average and no worst case: a nan is never skipped.
        worst = min(others, key=lambda j: m[i, j]) if others and not missing else None
        report = exploitability.get(cp["name"])
        hard_rates = {}
        if hard is not None:
            hard_missing = any(np.isnan(hard[i, j]) for j in others)
            hard_rates = {"avg_hard_win_rate": float("nan") if hard_missing else float(np.mean(hard[i])),
                          "worst_hard_win_rate": float(min(hard[i, j] for j in others))
                          if others and not hard_missing else float("nan")}
        rows.append({
            "checkpoint": cp["name"], "label": label,
            "avg_win_rate": float("nan") if missing else float(np.mean(m[i])),
            "worst_win_rate": float(m[i, worst]) if worst is not None else float("nan"),
            "worst_against": labels[worst] if worst is not None else "",
            "missing_cells": missing,
            **hard_rates,
            **({"judged": int(counts[0][i].sum()), "failed": int(counts[1][i].sum())} if counts is not None else {}),
            **{column: None if meta is None else float(round(meta[column][i], 10)) + 0.0  # no "-0.0000"
               for column in META_COLUMNS},
            "avg_tokens": lengths[cp["generation"]],
            "exploitability": report["exploitability"] if report else None,
            "category_distribution": ", ".join(f"{k} {v:.3f}" for k, v in report["category_distribution"].items())
            if report else "",
            "policy": cp.get("policy", ""),
        })
    return rows
