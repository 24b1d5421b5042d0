"""Evaluation commands used by the workflow's final rules.

    linepo exploitability --policy DIR --prompts eval.parquet --judge-config '{"type": "synthetic"}' --out r.json
    linepo run-steps --steps '[{"round": 1, "split": "0", "policy": "..."}]' --out steps.tsv
    linepo exploitability-table --report linepo=r.json --report inpo=i.json --out table.tsv
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from linepo.commands.judge import judge_config_keys
from linepo.errors import InputError


def register(subparsers) -> None:
    from linepo.sources import DTYPES

    report = subparsers.add_parser(
        "exploitability", help="a policy's exploitability under the synthetic oracle",
        description="linepo exploitability: how far a best response beats the policy under the synthetic "
        "oracle, max_j P(y_j ≻ π) − ½ per prompt averaged over prompts; exact when each of the oracle's first "
        "words is one token, else by Monte Carlo over --samples responses. Writes a JSON report.",
        epilog=lambda: judge_config_keys(types=("synthetic",)))
    report.add_argument("--policy", required=True, help="model folder or hub id")
    report.add_argument("--prompts", required=True, help="a prompts parquet file")
    report.add_argument("--judge-config", default='{"type": "synthetic"}', help="inline JSON or a JSON/YAML file")
    report.add_argument("--samples", type=int, default=8, help="Monte Carlo samples per prompt when not exact")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--dtype", choices=DTYPES, default="auto")
    report.add_argument("--trust-remote-code", action="store_true")
    report.add_argument("--allow-pickle-weights", action="store_true", help="load pytorch_model.bin (pickle) weights when a folder has no safetensors")
    report.add_argument("--out", required=True, help="JSON report to write")
    report.set_defaults(func=run_exploitability)

    steps = subparsers.add_parser(
        "run-steps", help="write a run's schedule as a readable table",
        description="linepo run-steps: write a run's schedule (from the workflow plan) as a TSV: one row per "
        "step with its round, split, whether the reference moved, its policy and its reference; a Mirror-Prox or "
        "OMWU run also has its half steps, with columns half and sampler.")
    steps.add_argument("--steps", required=True, help="JSON list of steps (from the workflow plan)")
    steps.add_argument("--out", required=True)
    steps.set_defaults(func=run_steps)

    table = subparsers.add_parser("exploitability-table", help="collect exploitability reports into one TSV")
    table.add_argument("--report", action="append", required=True, metavar="NAME=FILE")
    table.add_argument("--out", required=True)
    table.set_defaults(func=run_table)


def run_exploitability(args) -> int:
    from linepo.stages.judges import SyntheticJudge, load_judge_config, make_judge
    from linepo.evaluation.exploitability import report
    from linepo.schemas import atomic_path, read_table

    config, label = load_judge_config(args.judge_config)
    judge = make_judge(config, source=label)
    if not isinstance(judge, SyntheticJudge):
        raise InputError(f"{label}: exploitability needs the synthetic oracle (its categories are known)")
    rows = read_table(args.prompts, "prompts").to_pylist()
    result = report(args.policy, rows, judge, samples=args.samples, seed=args.seed, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code, allow_pickle_weights=args.allow_pickle_weights)
    result["policy"] = args.policy
    from linepo import numerics

    result[numerics.KEY] = numerics.output_history([args.policy], computed=True)  # the policy's history, and this job
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.policy}: exploitability {result['exploitability']:.4f} ({result['method']})", file=sys.stderr)
    return 0


def run_steps(args) -> int:
    from linepo.schemas import atomic_path

    steps = json.loads(args.steps)
    lines = ["round\tsplit\treference_moved\tpolicy\treference"]
    lines += [f"{s['round']}\t{s['split']}\t{s['reference_moved']}\t{s['policy']}\t{s['reference']}" for s in steps]
    if steps and "half" in steps[0]:  # a two-step schedule (linepo.workflow.schedules): which rows are half steps
        lines = [line + extra for line, extra in
                 zip(lines, ["\thalf\tsampler"] + [f"\t{s['half']}\t{s['sampler']}" for s in steps])]
    if steps and "anchor" in steps[0]:  # MNPO, ONPO, EGPO: the anchor (MNPO: a mixture) of each step
        lines = [line + extra for line, extra in zip(lines, ["\tanchor"] + [f"\t{s['anchor']}" for s in steps])]
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return 0


def run_table(args) -> int:
    from linepo.schemas import atomic_path

    lines = ["run\texploitability\tstderr\tmethod\tcategory_distribution\tpolicy"]
    for item in args.report:
        name, _, path = item.partition("=")
        try:
            result = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"--report {item}: file not found") from None
        dist = ", ".join(f"{k} {v:.3f}" for k, v in result["category_distribution"].items())
        lines.append(f"{name}\t{result['exploitability']:.4f}\t{result['exploitability_stderr']:.4f}"
                     f"\t{result['method']}\t{dist}\t{result['policy']}")
    text = "\n".join(lines) + "\n"
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(text)
    print(text, end="")
    return 0
