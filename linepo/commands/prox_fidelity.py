"""Prox fidelity of every training step under the synthetic oracle (linepo.evaluation.prox_fidelity).

    linepo prox-fidelity --spec '{"run": "inpo", "algorithm": "inpo", "iterates": [...], "steps": [...]}' \
        --prompts eval.parquet --tsv results/runs/inpo/prox_fidelity.tsv --probs results/runs/inpo/category_probs.json
    linepo prox-fidelity-table --run inpo=results/runs/inpo/prox_fidelity.tsv --tsv t.tsv --runs-tsv r.tsv --figure f.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from linepo.commands.judge import judge_config_keys
from linepo.errors import InputError


def register(subparsers) -> None:
    from linepo.sources import DTYPES

    run = subparsers.add_parser(
        "prox-fidelity", help="one run's per-step distance to the exact Prox step (synthetic oracle)",
        description="linepo prox-fidelity: read every iterate of a run (SFT and each step's policy) as exact "
        "per-prompt category distributions on the eval prompts, compute each step's exact Prox target from "
        "its measured sampler and reference, and write KL(trained ‖ target) and TV per step, with the "
        "exploitability of the trained policy, of the target and of the exact analogue trajectory.",
        epilog=lambda: judge_config_keys(types=("synthetic",)))
    run.add_argument("--spec", required=True, help="JSON: run, algorithm, iterates (policy folders: SFT, then "
                     "one per step) and steps (step, round, split, loss, eta, eta_tau, reference iterate; optional sampler "
                     "iterate, default the previous one)")
    run.add_argument("--prompts", required=True, help="a prompts parquet file (the eval prompts)")
    run.add_argument("--judge-config", default='{"type": "synthetic"}', help="inline JSON or a JSON/YAML file")
    run.add_argument("--dtype", choices=DTYPES, default="auto")
    run.add_argument("--trust-remote-code", action="store_true")
    run.add_argument("--tsv", required=True, help="the run's per-step table to write")
    run.add_argument("--probs", required=True, help="JSON of every iterate's per-prompt category distribution")
    run.set_defaults(func=run_fidelity)

    table = subparsers.add_parser(
        "prox-fidelity-table", help="collect runs' prox-fidelity tables into one TSV, a summary and a figure",
        description="linepo prox-fidelity-table: concatenate per-run prox-fidelity tables, write one summary "
        "line per run (median KL to the Prox target, final measured vs analogue exploitability) and the figure.")
    table.add_argument("--run", action="append", required=True, metavar="NAME=FILE")
    table.add_argument("--tsv", required=True, help="every step of every run")
    table.add_argument("--runs-tsv", required=True, help="one line per run")
    table.add_argument("--figure", help="PNG: KL to the target per step, measured vs analogue exploitability")
    table.set_defaults(func=run_table)


def _spec(text: str) -> dict:
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise InputError(f"--spec: not JSON ({err})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("iterates"), list):
        raise InputError("--spec: needs an object with run, algorithm, iterates and steps")
    return spec


def run_fidelity(args) -> int:
    import numpy as np

    from linepo.evaluation import prox_fidelity as pf
    from linepo.evaluation.exploitability import exact_category_probs
    from linepo.schemas import atomic_path, read_table
    from linepo.stages.judges import SyntheticJudge, load_judge_config, make_judge

    spec = _spec(args.spec)
    steps = pf.steps_from_spec(spec.get("steps"))
    iterates = [str(p) for p in spec["iterates"]]
    if len(iterates) != len(steps) + 1:
        raise InputError(f"--spec: {len(steps)} steps need {len(steps) + 1} iterates (SFT first), got {len(iterates)}")
    config, label = load_judge_config(args.judge_config)
    judge = make_judge(config, source=label) if config.get("type") == "synthetic" else None
    if not isinstance(judge, SyntheticJudge):  # checked before a model judge would be loaded
        raise InputError(f"{label}: prox fidelity needs the synthetic oracle (its categories are known)")
    prompts = [row["prompt"] for row in read_table(args.prompts, "prompts").to_pylist()]
    if not prompts:
        raise InputError(f"{args.prompts}: no prompts")
    run, algorithm = str(spec.get("run", "")), str(spec.get("algorithm", ""))

    measured = _measure(iterates, prompts, judge, args.dtype, args.trust_remote_code, exact_category_probs)
    if measured is None:
        reason = "unavailable: the oracle's first words are not single tokens of the policy's tokenizer"
        print(f"linepo prox-fidelity: warning: {run}: {reason}; the table has nan values", file=sys.stderr)
        rows = pf.unavailable_rows(steps, run=run, algorithm=algorithm, policies=iterates, reason="unavailable")
    else:
        rows = pf.fidelity_rows(judge.augmented_matrix, [measured[p] for p in iterates], steps, run=run,
                                algorithm=algorithm, policies=iterates)
    names = list(judge.categories) + ["unmatched"]
    probs = {"run": run, "categories": names, "prompts": len(prompts),
             "iterates": [{"index": i, "policy": p, "probs": None if measured is None
                           else np.round(measured[p], 9).tolist()} for i, p in enumerate(iterates)]}
    with atomic_path(args.probs) as tmp:
        Path(tmp).write_text(json.dumps(probs) + "\n")
    text = pf.format_tsv(rows, pf.COLUMNS)
    with atomic_path(args.tsv) as tmp:
        Path(tmp).write_text(text)
    print(text, end="")
    return 0


def _measure(iterates, prompts, judge, dtype, trust_remote_code, exact_category_probs):
    """Each distinct iterate's (prompts, k + 1) exact category distribution; None if not exact."""
    from linepo.stages.models import load_policy

    measured = {}
    for policy in dict.fromkeys(iterates):
        model, tokenizer = load_policy(policy, dtype=dtype, trust_remote_code=trust_remote_code)
        model.eval()
        probs = exact_category_probs(model, tokenizer, prompts, judge)
        if probs is None:
            return None
        measured[policy] = probs
        print(f"{policy}: category mix {probs.mean(axis=0).round(4).tolist()}", file=sys.stderr)
    return measured


def run_table(args) -> int:
    from linepo.evaluation import prox_fidelity as pf
    from linepo.schemas import atomic_path

    rows, runs = [], []
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--run {item}: expected NAME=FILE")
        run_rows = pf.read_tsv(path)
        if not run_rows:
            raise InputError(f"--run {item}: the table has no steps")
        rows += run_rows
        runs.append(pf.run_summary(run_rows))
    with atomic_path(args.tsv) as tmp:
        Path(tmp).write_text(pf.format_tsv(rows, pf.COLUMNS))
    summary = pf.format_tsv(runs, pf.RUN_COLUMNS)
    with atomic_path(args.runs_tsv) as tmp:
        Path(tmp).write_text(summary)
    if args.figure:
        from linepo.evaluation.figures import prox_fidelity

        prox_fidelity(rows, args.figure)
    print(summary, end="")
    return 0
