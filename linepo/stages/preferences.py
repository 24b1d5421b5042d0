"""Tournament → preference set (paper §5, "Online Preference Data Generation").

    linepo judge --samples results/x/samples.parquet --judge-config judge.yaml \
        --out results/x/judgments.parquet --seed 0
    linepo pairs --samples results/x/samples.parquet --judgments results/x/judgments.parquet \
        --selection best_vs_worst --out results/x/preferences.parquet

Step 1 (:func:`run_tournament`): every unordered pair of each prompt's n samples is judged
once (LM judges judge both orders inside), giving a "judgments" table. Step 2
(:func:`select_preferences`): each sample is scored by its mean win rate against the
prompt's other samples, and one (chosen, rejected) pair is kept per prompt:

- ``best_vs_worst``: the best and the worst sample (the paper's text);
- ``first_vs_second``: the best and the second best (the paper's public code);
- ``random_pair``: samples 0 and 1 — a pair drawn from the policy — labelled by the
  oracle: Appendix F's data, whose IPO/INPO loss minimiser is exactly the Prox step (the
  two selections above move that target);
- ``all_pairs``: every judged pair, each labelled by the oracle: n(n−1)/2 unbiased pairs
  per prompt for the price of n samples.

``use_outcomes`` scores and labels with the sampled 0/1 oracle outcomes (the paper's
oracle) instead of the probabilities. The two labelled selections then write hard labels
(``label_probability`` 1); without it they write the judge's probability as a soft label,
which has the same loss minimiser and less variance (:mod:`linepo.losses`). The ranked
selections always write hard labels. Failed comparisons are left out; a ranked pair whose
chosen and rejected scores are equal, or any pair whose texts are identical, is dropped.
Everything left out is counted in the returned stats. Among equal scores the lower
``sample_index`` ranks first, so the selection is deterministic. The ranked selections rank
*distinct* texts, as the paper's code does (a text sampled twice is one candidate, scored on
its comparisons with other texts; counted as ``merged_duplicate_samples``), so a repeated
best answer does not turn the pair into "best vs itself" and lose the prompt.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from linepo.errors import InputError
from linepo.schemas import read_table, write_table

log = logging.getLogger(__name__)

SELECTIONS = ("best_vs_worst", "first_vs_second", "random_pair", "all_pairs")
#: Selections that keep judged pairs as they are, labelled by the oracle (outcome or probability).
LABELLED_SELECTIONS = ("random_pair", "all_pairs")


# ----------------------------------------------------------------------------- samples


def group_samples(table, path: str | Path = "samples") -> dict[str, dict]:
    """Samples grouped by prompt, in order of first appearance.

    Returns ``{prompt_id: {"prompt": text, "responses": {sample_index: response},
    "finished": {sample_index: bool}, "stop": {sample_index: stop token id or None}}}`` with
    each prompt's samples sorted by ``sample_index``; ``finished`` is false for a sample cut
    at max_new_tokens, ``stop`` the token that ended it (scoring appends exactly that one).

    Raises:
        InputError: a (prompt_id, sample_index) appears twice, or one prompt_id carries
            two different prompt texts; the message names ``path``.
    """
    columns = table.select(["prompt_id", "prompt", "sample_index", "response", "finish_reason",
                            "stop_token_id", "response_token_ids"]).to_pydict()
    groups: dict[str, dict] = {}
    for pid, prompt, index, response, reason, stop, ids in zip(
            columns["prompt_id"], columns["prompt"], columns["sample_index"], columns["response"],
            columns["finish_reason"], columns["stop_token_id"], columns["response_token_ids"]):
        group = groups.setdefault(pid, {"prompt": prompt, "responses": {}, "finished": {}, "stop": {}, "ids": {}})
        if group["prompt"] != prompt:
            raise InputError(f"{path}: prompt_id {pid!r} has two different prompt texts")
        if index in group["responses"]:
            raise InputError(f"{path}: sample ({pid!r}, {index}) appears twice")
        group["responses"][index] = response
        group["finished"][index] = reason != "length"
        group["stop"][index] = stop if reason != "length" else None
        group["ids"][index] = ids
    for group in groups.values():
        group["responses"] = dict(sorted(group["responses"].items()))
    return groups


def tournament_comparisons(groups: dict[str, dict]) -> list[tuple[str, str, int, int, str, str]]:
    """Every unordered pair of each prompt's samples: (prompt_id, prompt, i, j, y_i, y_j), i < j."""
    comparisons = []
    for pid, group in groups.items():
        items = list(group["responses"].items())
        for x, (i, yi) in enumerate(items):
            for j, yj in items[x + 1:]:
                comparisons.append((pid, group["prompt"], i, j, yi, yj))
    return comparisons


# ----------------------------------------------------------------------------- step 1: judge


def run_tournament(groups: dict[str, dict], judge, *, seed: int | None = None, progress: bool | None = None):
    """Judge every pair of every prompt's samples.

    Args:
        groups: from :func:`group_samples`.
        judge: a :class:`linepo.stages.judges.Judge`.
        seed: seed of the oracle outcomes (default: the judge's).
        progress: show a tqdm bar (None: only on a terminal).

    Returns:
        ``(rows, stats)``: rows as a dict of "judgments" columns (failed comparisons have
        null ``prob_a_wins`` and ``outcome``) and counts plus throughput.
    """
    from tqdm import tqdm

    comparisons = tournament_comparisons(groups)
    n = len(comparisons)
    prob = np.full(n, np.nan)
    outcome = np.full(n, -1, dtype=np.int8)
    failed = np.zeros(n, dtype=bool)
    reasons: list = [None] * n
    start = time.perf_counter()
    # disable=None: a bar on a terminal only, none in logs of batch jobs.
    bar = tqdm(total=n, unit="cmp", desc=f"judge ({judge.name})", leave=False,
               disable=None if progress is None else not progress)
    with bar:
        for lo in range(0, n, judge.chunk_size):
            chunk = comparisons[lo:lo + judge.chunk_size]
            p, o, f = judge.judge([c[1] for c in chunk], [c[4] for c in chunk], [c[5] for c in chunk], seed=seed)
            prob[lo:lo + len(chunk)], outcome[lo:lo + len(chunk)], failed[lo:lo + len(chunk)] = p, o, f
            reasons[lo:lo + len(chunk)] = judge.last_reasons
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    rows = {
        "prompt_id": [c[0] for c in comparisons],
        "index_a": [c[2] for c in comparisons],
        "index_b": [c[3] for c in comparisons],
        "prob_a_wins": [None if f else float(p) for p, f in zip(prob, failed)],
        "outcome": [None if f else int(o) for o, f in zip(outcome, failed)],
        "failed": failed.tolist(),
        "failure": reasons,
    }
    stats = {
        "prompts": len(groups),
        "samples": sum(len(g["responses"]) for g in groups.values()),
        "prompts_with_fewer_than_2_samples": sum(len(g["responses"]) < 2 for g in groups.values()),
        "comparisons": n,
        "failed": int(failed.sum()),
        "seconds": round(seconds, 3),
        "comparisons_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    log.info("judged %d comparisons (%d failed) in %.1f s: %s comparisons/s",
             n, stats["failed"], seconds, stats["comparisons_per_s"])
    return rows, stats


def judge_samples(samples_path, judge_config: dict | None, out, *, seed: int | None = None,
                  source: str = "judge config", progress: bool | None = None,
                  max_failed_fraction: float | None = None) -> dict:
    """Read samples, build the judge, run the tournament, write the judgments file.

    The file's metadata holds the judge config, the seed and the counts (no timings, so
    equal inputs give byte-identical files).

    Raises:
        InputError: unreadable or schema-mismatched samples, or a bad judge config.
    """
    from linepo.stages.judges import DEFAULT_JUDGE_CONFIG, make_judge

    groups = group_samples(read_table(samples_path, "samples"), samples_path)
    judge = make_judge(judge_config, source=source)
    if max_failed_fraction is not None:  # the workflow's flag: not part of the judge config (or the node id)
        judge.max_failed_fraction = max_failed_fraction
    seed = judge.seed if seed is None else seed
    rows, stats = run_tournament(groups, judge, seed=seed, progress=progress)
    check_failures(stats["failed"], stats["comparisons"], judge, what="comparisons")
    counts = {k: v for k, v in stats.items() if k not in ("seconds", "comparisons_per_s")}
    config = DEFAULT_JUDGE_CONFIG if judge_config is None else judge_config
    metadata = {"judge": config, "seed": seed, "counts": counts}
    if hasattr(judge, "describe"):
        metadata["judge_facts"] = judge.describe()  # e.g. the chat template's sha256
    write_table(rows, out, "judgments", metadata=metadata, inputs=[samples_path], computed=judge.runs_model)
    return stats


class JudgeFailed(InputError):
    """More comparisons failed than the judge's ``max_failed_fraction`` allows."""


def check_failures(failed: int, total: int, judge, *, what: str) -> None:
    """Stop a step whose judge failed too often, with one line saying why.

    Raises:
        JudgeFailed: ``failed / total`` is above ``judge.max_failed_fraction``.
    """
    if total and failed / total > judge.max_failed_fraction:
        raise JudgeFailed(f"judge: {failed} of {total} {what} failed ({failed / total:.0%} > "
                          f"max_failed_fraction {judge.max_failed_fraction:.0%}): {judge.failure_summary()}; "
                          "nothing written")


# ----------------------------------------------------------------------------- step 2: select


def select_preferences(groups: dict[str, dict], judgments, *, selection: str = "best_vs_worst",
                       use_outcomes: bool = False, judgments_path: str | Path = "judgments"):
    """One (chosen, rejected) pair per prompt from the tournament's judgments.

    Args:
        groups: from :func:`group_samples`.
        judgments: a "judgments" table (pyarrow) or a dict of its columns.
        selection: ``best_vs_worst`` or ``first_vs_second``.
        use_outcomes: score with the 0/1 outcomes instead of the probabilities.
        judgments_path: names the judgments in error messages.

    Returns:
        ``(rows, stats)``: rows as a list of "preferences" dicts, in prompt order, and the
        counts of what was kept and dropped.

    Raises:
        ValueError: unknown ``selection``.
        InputError: a judgment refers to a sample that is not in ``groups``, compares a
            sample with itself, or a comparison not marked failed lacks its value.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    columns = judgments.to_pydict() if hasattr(judgments, "to_pydict") else judgments
    wins: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    failed_total = used = 0
    value_column = "outcome" if use_outcomes else "prob_a_wins"
    for row, (pid, a, b, value, failed) in enumerate(zip(columns["prompt_id"], columns["index_a"], columns["index_b"],
                                                        columns[value_column], columns["failed"])):
        group = groups.get(pid)
        for index in (a, b):
            if group is None or index not in group["responses"]:
                raise InputError(f"{judgments_path}: row {row} refers to sample ({pid!r}, {index}), "
                                 "which is not in the samples")
        if a == b:
            raise InputError(f"{judgments_path}: row {row} compares sample ({pid!r}, {a}) with itself")
        if failed:
            failed_total += 1
            continue
        if value is None or not (0.0 <= value <= 1.0):
            raise InputError(f"{judgments_path}: row {row} has {value_column} = {value!r} but is not marked failed")
        used += 1
        wins[pid][a] += value
        counts[pid][a] += 1
        wins[pid][b] += 1.0 - value
        counts[pid][b] += 1

    rows = []
    stats = {"prompts": len(groups), "pairs": 0, "comparisons_used": used, "failed_comparisons": failed_total,
             "dropped_too_few_scored": 0, "dropped_tied_scores": 0, "dropped_identical_texts": 0,
             "merged_duplicate_samples": 0}
    if selection in LABELLED_SELECTIONS:
        del stats["merged_duplicate_samples"]
        rows = _labelled_pairs(groups, columns, wins, counts, stats, first_only=selection == "random_pair",
                               use_outcomes=use_outcomes)
        stats["pairs"] = len(rows)
        log.info("preferences (%s, %s labels): %s", selection, "outcome" if use_outcomes else "probability", stats)
        return rows, stats
    text_scores = _distinct_text_scores(groups, columns, value_column)
    for pid, group in groups.items():
        # Rank distinct texts, as the paper's code does: a text sampled twice is one candidate
        # (scored on all its comparisons with other texts), so a repeated best answer does not
        # make the prompt's pair "best vs itself" and lose the prompt.
        representative: dict[str, int] = {}
        for i, text in group["responses"].items():
            representative.setdefault(text, i)
        stats["merged_duplicate_samples"] += len(group["responses"]) - len(representative)
        if len(representative) < 2:
            stats["dropped_identical_texts" if len(group["responses"]) > 1 else "dropped_too_few_scored"] += 1
            continue
        scores = {representative[t]: v for t, v in text_scores.get(pid, {}).items()}
        if len(scores) < 2:
            stats["dropped_too_few_scored"] += 1
            continue
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        chosen = ranked[0]
        rejected = ranked[-1] if selection == "best_vs_worst" else ranked[1]
        if scores[chosen] == scores[rejected]:
            stats["dropped_tied_scores"] += 1
            continue
        rows.append(_pair_row(pid, group, chosen, rejected, scores[chosen], scores[rejected], 1.0))
    stats["pairs"] = len(rows)
    log.info("preferences (%s, %s): %s", selection, "outcomes" if use_outcomes else "probabilities", stats)
    return rows, stats


def _pair_row(pid, group, chosen: int, rejected: int, chosen_rate: float, rejected_rate: float, label: float) -> dict:
    return {
        "prompt_id": pid, "prompt": group["prompt"], "chosen": group["responses"][chosen],
        "rejected": group["responses"][rejected], "chosen_index": chosen, "rejected_index": rejected,
        "chosen_finished": group["finished"][chosen], "rejected_finished": group["finished"][rejected],
        "chosen_stop_token_id": group["stop"][chosen], "rejected_stop_token_id": group["stop"][rejected],
        "chosen_token_ids": group["ids"][chosen], "rejected_token_ids": group["ids"][rejected],
        "chosen_win_rate": chosen_rate, "rejected_win_rate": rejected_rate, "label_probability": float(label),
    }


def _distinct_text_scores(groups, columns, value_column: str) -> dict[str, dict[str, float]]:
    """Per prompt and distinct response text: its mean win probability (or outcome) over every
    non-failed comparison with a *different* text (a text against itself says nothing)."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for pid, a, b, value, failed in zip(columns["prompt_id"], columns["index_a"], columns["index_b"],
                                        columns[value_column], columns["failed"]):
        if failed:
            continue
        text_a, text_b = groups[pid]["responses"][a], groups[pid]["responses"][b]
        if text_a == text_b:
            continue
        sums[pid][text_a] += value
        counts[pid][text_a] += 1
        sums[pid][text_b] += 1.0 - value
        counts[pid][text_b] += 1
    return {pid: {t: sums[pid][t] / counts[pid][t] for t in counts[pid]} for pid in counts}


def _labelled_pairs(groups, columns, wins, counts, stats, *, first_only: bool, use_outcomes: bool) -> list[dict]:
    """Judged pairs in judgment order, as (winner, loser) by the sampled outcome with a hard
    label, or (more likely, less likely) by the probability with that probability as a soft
    label (a tie keeps the judged order, with label ½).

    ``first_only`` keeps only the comparison of samples 0 and 1 of each prompt.
    """
    rows = []
    for pid, a, b, outcome, prob, failed in zip(columns["prompt_id"], columns["index_a"], columns["index_b"],
                                                columns["outcome"], columns["prob_a_wins"], columns["failed"]):
        if failed or (first_only and {a, b} != {0, 1}):
            continue
        group = groups[pid]
        if use_outcomes:
            (chosen, rejected), label = ((a, b) if outcome == 1 else (b, a)), 1.0
        else:
            (chosen, rejected), label = ((a, b), prob) if prob >= 0.5 else ((b, a), 1.0 - prob)
        if group["responses"][chosen] == group["responses"][rejected]:
            stats["dropped_identical_texts"] += 1
            continue
        rate = lambda i: wins[pid][i] / counts[pid][i]  # noqa: E731
        rows.append(_pair_row(pid, group, chosen, rejected, rate(chosen), rate(rejected), label))
    return rows


def build_preferences(samples_path, judgments_path, out, *, selection: str = "best_vs_worst",
                      use_outcomes: bool = False) -> dict:
    """Read samples and judgments, select one pair per prompt, write the preferences file.

    Raises:
        InputError: a missing, corrupt or schema-mismatched file, judgments that do not
            match the samples, or an unknown selection.
    """
    if selection not in SELECTIONS:
        raise InputError(f"--selection: must be one of {list(SELECTIONS)}, got {selection!r}")
    groups = group_samples(read_table(samples_path, "samples"), samples_path)
    judgments = read_table(judgments_path, "judgments")
    rows, stats = select_preferences(groups, judgments, selection=selection, use_outcomes=use_outcomes,
                                     judgments_path=judgments_path)
    probabilities = [p for p, failed in zip(judgments.column("prob_a_wins").to_pylist(),
                                            judgments.column("failed").to_pylist()) if not failed]
    no_signal = bool(probabilities) and all(p == 0.5 for p in probabilities)
    if not rows:
        dropped = ", ".join(f"{v} {k.removeprefix('dropped_').replace('_', ' ')}" for k, v in stats.items()
                            if k.startswith("dropped_") and v)
        if no_signal:
            raise InputError(f"{judgments_path}: every comparison is a tie (P = 0.5), so no pairs from "
                             f"{stats['prompts']} prompts (dropped: {dropped or 'none'}): the judge tells the samples "
                             "apart by nothing; check the judge and its config")
        raise InputError(f"{judgments_path}: no pairs from {stats['prompts']} prompts ({stats['failed_comparisons']} "
                         f"failed comparisons; dropped: {dropped or 'none'}): nothing to train on")
    if no_signal:
        # Not an error: with p = ½ every loss's minimiser is still the right step of a game in which
        # all responses tie (INPO/LINE-PO move toward the reference, DPO/IPO/SPPO stay put), and a
        # weak judge on a weak policy can tie everything once; but it usually means a broken judge.
        labels = "coin-flip outcomes" if use_outcomes else "label 0.5"
        log.warning("%s: every comparison is a tie (P = 0.5): the judge tells the samples apart by nothing; "
                    "%d pairs with %s teach no preference (check the judge)", judgments_path, len(rows), labels)
    write_table(rows, out, "preferences",
                metadata={"selection": selection, "use_outcomes": use_outcomes, "counts": stats},
                inputs=[samples_path, judgments_path])
    return stats
