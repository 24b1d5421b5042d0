"""``linepo judge``: judge every pair of each prompt's samples and write a judgments file.

    linepo judge --samples results/x/samples.parquet --out results/x/judgments.parquet --seed 0
    linepo judge --samples S --judge-config configs/offsetbias.yaml --out J --seed 0
    linepo judge --samples S --judge-config '{"type": "reward_model", "model": "path/to/rm"}' --out J

Without ``--judge-config`` the embedded synthetic judge is used (the paper's 3×3 game over
brief / plain / detailed responses). Bad input (unknown judge type, a matrix that is not a
preference matrix, a missing model, a missing or schema-mismatched samples file) exits 2
with one line naming it, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from linepo.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "judge",
        help="judge all pairs of each prompt's samples (synthetic, pairwise LM or reward model judge)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--samples", required=True, type=Path, help="a samples parquet file")
    parser.add_argument("--judge-config", default=None,
                        help="inline JSON, or a .json/.yaml file, with a 'type' key: synthetic, pairwise_lm or "
                             "reward_model (default: the embedded synthetic judge)")
    parser.add_argument("--out", required=True, type=Path, help="the judgments parquet file to write")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the sampled 0/1 oracle outcomes (default: the config's 'seed', else 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linepo.judges import load_judge_config
    from linepo.preferences import judge_samples

    if args.out.suffix != ".parquet":
        raise InputError(f"--out {args.out}: must end in .parquet")
    if args.judge_config is None:
        config, source = None, "embedded judge config"
    else:
        config, source = load_judge_config(args.judge_config)
    stats = judge_samples(args.samples, config, args.out, seed=args.seed, source=source,
                          progress=False if args.no_progress else None)
    print(f"linepo judge: wrote {args.out}: {stats['comparisons']} comparisons of {stats['prompts']} prompts, "
          f"{stats['failed']} failed, {stats['comparisons_per_s']} comparisons/s", file=sys.stderr)
    print(json.dumps(stats, sort_keys=True))
    return 0
