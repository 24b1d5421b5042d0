"""Re-train single steps of a finished run: how close each lands to its exact Prox step, at what cost.

    HF_HUB_OFFLINE=1 python bench/prox_refit.py --workdir . --run linepo --step 1 --step 12 \\
        --samples 5 --samples 16 --variant default= \\
        --variant 'converged={"epochs": 8, "learning_rate": 1e-4, "prompts_per_batch": 4}' \\
        --seeds 0 1 --tsv refit.tsv

For each chosen step of ``--run`` (its replicate ``--replicate``, in a working directory where
the workflow has run it) and each data size ``--samples`` n: the step's own scored pairs when n
is the config's ``sampling.n``, otherwise new ones drawn by the pipeline's own commands from the
step's sampler (``linepo sample`` / ``judge`` / ``pairs`` / ``score --deduplicate``, seed
``--data-seed``); ``--prompts K`` redraws them on the first K prompts of the step's split (fewer
prompts, more samples each). On each, every ``--variant`` (NAME=JSON of training settings over the step's
own; ``NAME=`` keeps them) is trained from the step's parent once per ``--seeds`` entry
(``training.seed``: batch order and model-side seed). Each trained policy is read exactly on the
eval prompts (first-token category mix, as ``linepo prox-fidelity``) and compared with the
step's exact Prox target from the measured sampler and reference.

Printed per (step, n, variant): TV and KL(trained ‖ target) over prompts (mean over seeds), the
TV between seeds' policies (how much the batch order decides), the mean per-prompt exploitability
of the trained policy and of the target, and the seconds: new data (sample + judge + pairs +
score, wall) and training (``linepo train``'s own figure and the wall time of its process), with
the ratio to the step's own settings on its own data measured in the same run. Run it on an
idle machine; on a shared one the seconds are noise. Nothing under ``--workdir`` is written:
new data and policies go to ``--scratch`` (default: a temp folder, removed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ("step", "round", "split", "loss", "samples", "pairs", "variant", "seed", "tv_to_target", "kl_to_target",
           "trained_exploitability", "target_exploitability", "train_seconds", "train_wall_seconds", "data_seconds")


def run_linepo(*args: str) -> tuple[dict | None, float]:
    """Run one ``linepo`` command in this process (imports already paid, as the workflow's warm
    jobs have them): its last stdout line as JSON (if any) and its wall seconds."""
    from linepo.cli import main as cli

    stdout = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        status = cli(list(args))
    seconds = time.perf_counter() - start
    if status:
        sys.exit(f"prox_refit: linepo {args[0]} exited {status}")
    last = stdout.getvalue().strip().splitlines()[-1:] or [""]
    try:
        return json.loads(last[0]), seconds
    except ValueError:
        return None, seconds


def load_wiring(workdir: Path, config_files: list[Path], overrides: list[str]):
    import yaml

    from linepo.workflow.config import validate_config
    from linepo.workflow.wiring import Wiring

    config: dict = {}
    for path in config_files or [workdir / "config.yaml"]:
        config.update(yaml.safe_load(Path(path).read_text()) or {})
    for item in overrides:  # KEY=YAML, top-level keys as snakemake --config takes them
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    return Wiring(validate_config(config))


def exact_mix(policy: Path, prompts: list[str], judge) -> np.ndarray:
    from linepo.evaluation.exploitability import exact_category_probs
    from linepo.stages.models import load_policy

    model, tokenizer = load_policy(str(policy))
    model.eval()
    probs = exact_category_probs(model, tokenizer, prompts, judge)
    if probs is None:
        sys.exit(f"prox_refit: {policy}: the oracle's first words are not single tokens of its tokenizer")
    return probs


def new_data(plan, step, node, samples: int, seed: int, scratch: Path, sampling: dict, *,
             deduplicate: bool = True, prompts: int | None = None) -> tuple[Path, float]:
    """The step's pairs redrawn with ``samples`` per prompt from its sampler, on the split's first
    ``prompts`` prompts (default: all): (scored file, wall seconds)."""
    from linepo.schemas import read_table, write_table

    prefs_node = plan.prefs[plan.scored[node.scored[0]].prefs[0]]
    sample_node = plan.samples[prefs_node.sample]
    folder = scratch / f"data-{step}-{samples}-{prompts}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    scored_node = plan.scored[node.scored[0]]
    prompts_path = plan.prompts_path(sample_node.split)
    if prompts is not None:
        write_table(read_table(prompts_path, "prompts").slice(0, prompts), folder / "prompts.parquet", "prompts")
        prompts_path = str(folder / "prompts.parquet")
    total = 0.0
    for args in (
        ["sample", "--policy", plan.policy_dir(sample_node.policy), "--prompts", prompts_path,
         "--out", str(folder / "samples.parquet"), "--n", str(samples), "--temperature", str(sampling["temperature"]),
         "--top-p", str(sampling["top_p"]), "--max-new-tokens", str(sampling["max_new_tokens"]),
         "--batch-size", str(sampling["batch_size"]), "--seed", str(seed)],
        ["judge", "--samples", str(folder / "samples.parquet"), "--judge-config", json.dumps(prefs_node.judge),
         "--seed", str(seed), "--out", str(folder / "judgments.parquet"), "--no-progress"],
        ["pairs", "--samples", str(folder / "samples.parquet"), "--judgments", str(folder / "judgments.parquet"),
         "--selection", prefs_node.preferences["selection"], "--out", str(folder / "prefs.parquet")]
        + (["--use-outcomes"] if prefs_node.preferences.get("use_outcomes") else []),
        ["score", "--preferences", str(folder / "prefs.parquet"), "--reference", plan.policy_dir(scored_node.reference),
         "--anchor", plan.policy_dir(scored_node.anchor), "--out", str(folder / "scored.parquet")]
        + (["--deduplicate"] if deduplicate else []),
    ):
        _, seconds = run_linepo(*args)
        total += seconds
    return folder / "scored.parquet", total


def summarise(rows: list[dict], mixes: dict) -> list[dict]:
    out = []
    for key, group in itertools.groupby(rows, key=lambda r: (r["step"], r["samples"], r["variant"])):
        group = list(group)
        seeds = [mixes[(*key, r["seed"])] for r in group]
        between = [float(np.mean(0.5 * np.abs(a - b).sum(axis=1))) for a, b in itertools.combinations(seeds, 2)]
        out.append({"step": key[0], "samples": key[1], "variant": key[2], "seeds": len(group),
                    "pairs": group[0]["pairs"],
                    **{name: float(np.mean([r[name] for r in group])) for name in
                       ("tv_to_target", "kl_to_target", "trained_exploitability", "target_exploitability",
                        "train_seconds", "train_wall_seconds", "data_seconds")},
                    "tv_between_seeds": float(np.mean(between)) if between else float("nan")})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="where the workflow ran (its results/)")
    parser.add_argument("--configfile", type=Path, action="append", default=[],
                        help="the run's config file(s), as given to snakemake (default: WORKDIR/config.yaml)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=YAML",
                        help="the run's --config overrides, e.g. replicates=5")
    parser.add_argument("--run", required=True)
    parser.add_argument("--replicate", type=int, default=0)
    parser.add_argument("--step", type=int, action="append", required=True, help="1-based training step (repeat)")
    parser.add_argument("--samples", type=int, action="append", default=[],
                        help="samples per prompt (repeat); default: the config's sampling.n")
    parser.add_argument("--prompts", type=int, help="redraw every step's data on its split's first PROMPTS prompts")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="training settings over the step's own (repeat); default: 'default='")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--tsv", type=Path, help="write every trained policy's row here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: what the workflow's jobs get, threads: 1)")
    parser.add_argument("--scratch", type=Path, help="keep new data and policies here (default: a temp folder)")
    args = parser.parse_args(argv)

    from linepo.evaluation import prox_fidelity as pf
    from linepo.schemas import read_table
    from linepo.stages.judges import make_judge

    workdir = args.workdir.resolve()
    os.chdir(workdir)  # the plan's paths are relative to the working directory
    wiring = load_wiring(workdir, args.configfile, args.config)
    plan, config = wiring.plan, wiring.config
    steps = plan.training_steps(args.run, args.replicate)
    if args.prompts is not None and args.prompts < 1:
        sys.exit(f"prox_refit: --prompts {args.prompts}: must be at least 1")
    variants = [item.partition("=") for item in (args.variant or ["default="])]
    variants = [(name, json.loads(text) if text.strip() else {}) for name, _, text in variants]
    sample_counts = args.samples or [config["sampling"]["n"]]
    prompts = [row["prompt"] for row in read_table(plan.eval_prompts_path(), "prompts").to_pylist()]
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="prox-refit-"))
    scratch.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    import linepo.stages.training.recipe  # noqa: F401  (imports before the first timing)
    import linepo.stages.sampling  # noqa: F401
    rows, mixes, measured = [], {}, {}
    try:
        for k in args.step:
            if not 1 <= k <= len(steps):
                sys.exit(f"prox_refit: --step {k}: run {args.run} has steps 1..{len(steps)}")
            step = steps[k - 1]
            node = plan.policies[step.policy]
            settings = plan.train_settings(step.policy)
            judge = make_judge(plan.prefs[plan.scored[node.scored[0]].prefs[0]].judge)
            for policy in (step.sampler or node.parent, step.reference):
                if policy not in measured:
                    measured[policy] = exact_mix(Path(plan.policy_dir(policy)), prompts, judge)
            matrix = np.asarray(judge.augmented_matrix, dtype=float)
            size = matrix.shape[0]
            target = pf.prox_targets(settings["loss"], matrix,
                                     pf.distributions(measured[step.sampler or node.parent], size, "sampler"),
                                     pf.distributions(measured[step.reference], size, "reference"),
                                     eta=settings["eta"], eta_tau=settings.get("eta_tau"))
            for n in sample_counts:
                if n == config["sampling"]["n"] and args.prompts is None:  # the step's own pairs; a redraw times their cost
                    scored = [plan.scored_path(s) for s in node.scored]
                    _, data_seconds = new_data(plan, k, node, n, args.data_seed, scratch, config["sampling"],
                                               deduplicate=bool(config["scoring"].get("deduplicate")))
                else:
                    path, data_seconds = new_data(plan, k, node, n, args.data_seed, scratch, config["sampling"],
                                                  prompts=args.prompts)
                    scored = [str(path)]
                pairs = sum(read_table(p, "scored").num_rows for p in scored)
                for (name, override), seed in itertools.product(variants, args.seeds):
                    out = scratch / f"policy-{k}-{n}-{name}-{seed}"
                    shutil.rmtree(out, ignore_errors=True)
                    stats, wall = run_linepo("train", "--policy", plan.policy_dir(node.parent), "--scored", *scored,
                                         "--config-json", json.dumps({**settings, **override, "seed": seed}),
                                         "--out", str(out), "--resume-dir", str(out) + ".partial")
                    mix = exact_mix(out, prompts, judge)
                    mixes[(k, n, name, seed)] = mix
                    trained = pf.distributions(mix, size, "trained")
                    rows.append({"step": k, "round": step.round, "split": step.split, "loss": settings["loss"],
                                 "samples": n, "pairs": pairs, "variant": name, "seed": seed,
                                 "tv_to_target": float(pf.tv_per_prompt(trained, target).mean()),
                                 "kl_to_target": float(pf.kl_per_prompt(trained, target).mean()),
                                 "trained_exploitability": pf.exploitability(matrix, trained),
                                 "target_exploitability": pf.exploitability(matrix, target),
                                 "train_seconds": float((stats or {}).get("seconds", float("nan"))),
                                 "train_wall_seconds": wall, "data_seconds": data_seconds})
                    print("\t".join(f"{rows[-1][c]:.4g}" if isinstance(rows[-1][c], float) else str(rows[-1][c])
                                    for c in COLUMNS), file=sys.stderr, flush=True)
                    shutil.rmtree(out, ignore_errors=args.scratch is None)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.tsv:
        args.tsv.write_text(pf.format_tsv(rows, COLUMNS))
    summary = summarise(rows, mixes)
    base = {s["step"]: s for s in summary if s["samples"] == config["sampling"]["n"] and s["variant"] == variants[0][0]}
    print("step\tsamples\tpairs\tvariant\tseeds\tTV\tKL\tTV_seeds\texpl\texpl_target\tdata_s\ttrain_s\ttrain_wall_s\t"
          "cost_ratio")
    for s in summary:
        reference = base.get(s["step"])
        cost = s["data_seconds"] + s["train_wall_seconds"]
        ratio = cost / (reference["data_seconds"] + reference["train_wall_seconds"]) if reference else float("nan")
        print(f"{s['step']}\t{s['samples']}\t{s['pairs']}\t{s['variant']}\t{s['seeds']}\t{s['tv_to_target']:.4f}\t"
              f"{s['kl_to_target']:.4f}\t{s['tv_between_seeds']:.4f}\t{s['trained_exploitability']:.4f}\t"
              f"{s['target_exploitability']:.4f}\t{s['data_seconds']:.1f}\t{s['train_seconds']:.1f}\t"
              f"{s['train_wall_seconds']:.1f}\t{ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
