"""``linepo plan``: what a workflow config plans, without Snakemake: node counts, run schedules,
evaluation checkpoints; ``--config`` prints the validated config with its defaults.

    linepo plan config.yaml
    linepo plan configs/paper.yaml --config
"""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("plan", help="print a config's plan (nodes, runs, checkpoints) or validated config",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="config.yaml", help="a workflow config (default config.yaml)")
    parser.add_argument("--config", dest="show_config", action="store_true",
                        help="print the validated config (defaults filled in) instead")
    parser.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from linepo.workflow.config import load_config
    from linepo.workflow.evalplan import build_eval_plan
    from linepo.workflow.evalplan import describe as describe_evaluation
    from linepo.workflow.plan import build_plan, describe

    config = load_config(args.config)
    if args.show_config:
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    plan = build_plan(config)
    print(describe(plan))
    print(describe_evaluation(build_eval_plan(config, plan)))
    return 0
