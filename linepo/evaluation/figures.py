"""Evaluation figures for the report: the win-rate heatmap (Table 2), the training curves
(Figure 3) and the Prox fidelity of every step. Matplotlib with the Agg backend, written atomically.

    linepo win-rates ... --figure results/summary/win_rates.png
    linepo eval-curves ... --figure results/summary/curves.png
    linepo prox-fidelity-table ... --figure results/summary/prox_fidelity.png
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out) -> Path:
    from linepo.schemas import atomic_path

    plt = _pyplot()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(out)


def heatmap(labels, m, se, out, *, title: str = "", judged=None, failed=None) -> Path:
    """Row-vs-column win rates (%) with ± SE in each cell, the Avg column beside them.

    A missing cell (nan: too many failed comparisons) is grey and says how many failed;
    a cell with some failures shows their count.
    """
    import numpy as np

    plt = _pyplot()
    k = len(labels)
    avg = m.mean(axis=1, keepdims=True)  # nan where the row has a missing cell
    fig, (ax, ax_avg) = plt.subplots(1, 2, figsize=(1.1 * k + 3.2, 0.75 * k + 1.6),
                                     gridspec_kw={"width_ratios": [k, 1.2]})
    for axis, values, names in ((ax, m, labels), (ax_avg, avg, ["Avg"])):
        axis.set_facecolor("lightgrey")  # imshow leaves nan cells transparent
        axis.imshow(np.ma.masked_invalid(100 * values), cmap="RdBu", vmin=0, vmax=100, aspect="auto")
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
        axis.set_yticks(range(k), labels if axis is ax else [""] * k)
        for i in range(k):
            for j in range(values.shape[1]):
                cell = axis is ax and i != j
                lost = f"{int(failed[i, j])}/{int(judged[i, j])} failed" if cell and failed is not None \
                    and failed[i, j] else ""
                if np.isnan(values[i, j]):
                    text = "missing" + (f"\n{lost}" if lost else "")
                else:
                    text = f"{100 * values[i, j]:.1f}"
                    if cell:
                        text += f"\n±{100 * se[i, j]:.1f}" + (f"\n{lost}" if lost else "")
                dark = not np.isnan(values[i, j]) and abs(values[i, j] - 0.5) > 0.3
                axis.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_ylabel("row")
    ax.set_title(title or "win rate of row vs column (%)")
    return _save(fig, out)


def curves(rows: list[dict], out, *, title: str = "") -> Path:
    """Figure 3: per run, win rate vs SFT (± SE) and mean output length over iterations: error bars
    (bootstrap SE over prompts) for one replicate's rows, bands of ± one SE over replicates for
    pooled ones (:func:`linepo.evaluation.pooled.pool_curves`: rows with ``replicates``)."""
    plt = _pyplot()
    fig, (ax_win, ax_len) = plt.subplots(1, 2, figsize=(10, 3.6))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    ends = set()
    for run in runs:
        points = [r for r in rows if r["run"] == run]
        x = [p["iteration"] for p in points]
        label = points[0]["label"]
        if "replicates" in points[0]:  # pooled: a line and its ± SE band on each axis
            for axis, values, se in ((ax_win, [100 * p["win_rate_vs_sft"] for p in points], [100 * p["se"] for p in points]),
                                     (ax_len, [p["avg_tokens"] for p in points], [p["avg_tokens_se"] for p in points])):
                (line,) = axis.plot(x, values, marker="o", markersize=3, label=label)
                axis.fill_between(x, [v - e for v, e in zip(values, se)], [v + e for v, e in zip(values, se)],
                                  color=line.get_color(), alpha=0.2, linewidth=0)
        else:
            ax_win.errorbar(x, [100 * p["win_rate_vs_sft"] for p in points], yerr=[100 * p["se"] for p in points],
                            marker="o", markersize=3, capsize=2, label=label)
            ax_len.plot(x, [p["avg_tokens"] for p in points], marker="o", markersize=3, label=label)
        length = points[0]["round_length"]
        if length:
            ends.update(range(length, max(x) + 1, length))
    for axis in (ax_win, ax_len):
        for end in sorted(ends):
            axis.axvline(end, color="red", linestyle="--", linewidth=0.8)
        axis.set_xlabel("iteration (training step)")
    ax_win.axhline(50, color="grey", linewidth=0.8)
    ax_win.set_ylabel("win rate vs SFT (%)")
    ax_len.set_ylabel("mean output length (tokens)")
    ax_win.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def prox_fidelity(rows: list[dict], out, *, title: str = "") -> Path:
    """Per run: KL(trained ‖ exact Prox target) per step (log scale), and exploitability per
    step, measured (solid) beside the exact analogue trajectory (dashed) and the exact step from
    the measured μ_k (crosses); step 0 is SFT. Rows pooled over replicates
    (:mod:`linepo.evaluation.pooled`) draw ± one standard error as bands around KL and measured
    (the KL band cut at a tenth of the run's smallest KL: its axis is logarithmic)."""
    import math

    def band(axis, x, values, se, color, floor):
        """± se around values, cut at ``floor``: a band, or an error bar where there is one point
        (nothing without se)."""
        if not se or not all(math.isfinite(e) for e in se):
            return
        low, high = [max(v - e, floor) for v, e in zip(values, se)], [v + e for v, e in zip(values, se)]
        if len(x) > 1:
            axis.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        else:
            axis.errorbar(x, values, yerr=[[v - lo for v, lo in zip(values, low)], [h - v for v, h in zip(values, high)]],
                          fmt="none", ecolor=color, alpha=0.5, capsize=3)

    def se_of(points, column):
        return [float(p.get(f"{column}_se", "nan")) for p in points] if f"{column}_se" in points[0] else []

    plt = _pyplot()
    fig, (ax_kl, ax_ex) = plt.subplots(1, 2, figsize=(10, 3.6))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for i, run in enumerate(runs):
        points = [r for r in rows if r["run"] == run]
        color = f"C{i % 10}"
        steps = [int(p["step"]) for p in points]
        kls = [max(float(p["kl_to_target"]), 1e-12) for p in points]  # log scale: an exact step is 1e-12
        ax_kl.plot(steps, kls, marker="o", markersize=3, color=color, label=run)
        band(ax_kl, steps, kls, se_of(points, "kl_to_target"), color, floor=min(kls) / 10)  # a log axis
        start = float(points[0]["start_exploitability"])
        measured = [start] + [float(p["measured_exploitability"]) for p in points]
        analogue = [start] + [float(p["analogue_exploitability"]) for p in points]
        if any(math.isnan(v) for v in measured):
            continue
        ax_ex.plot([0] + steps, measured, marker="o", markersize=3, color=color, label=f"{run} (measured)")
        measured_se = se_of(points, "measured_exploitability")
        band(ax_ex, [0] + steps, measured, measured_se and se_of(points[:1], "start_exploitability") + measured_se,
             color, floor=0.0)
        ax_ex.plot([0] + steps, analogue, linestyle="--", color=color, label=f"{run} (exact analogue)")
        ax_ex.plot(steps, [float(p["target_exploitability"]) for p in points], linestyle="none", marker="x",
                   markersize=4, color=color, label=f"{run} (exact step from measured μ_k)")
    ax_kl.set_yscale("log")
    ax_kl.set_ylabel("KL(trained ‖ exact Prox target)")
    ax_ex.set_ylabel("exploitability")
    for axis in (ax_kl, ax_ex):
        axis.set_xlabel("step")
        axis.xaxis.get_major_locator().set_params(integer=True)
    ax_kl.legend(fontsize=8)
    if ax_ex.get_legend_handles_labels()[0]:  # none when no run could be read exactly
        ax_ex.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)
