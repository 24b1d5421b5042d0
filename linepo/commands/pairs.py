"""``linepo pairs``: one (chosen, rejected) pair per prompt from a tournament's judgments.

    linepo pairs --samples results/x/samples.parquet --judgments results/x/judgments.parquet \\
        --selection best_vs_worst --out results/x/preferences.parquet
    linepo pairs ... --selection first_vs_second --use-outcomes

Samples are scored by their mean win rate against the prompt's other samples (from the
probabilities, or with ``--use-outcomes`` the sampled 0/1 oracle outcomes). Ties, identical
texts and failed comparisons are dropped and counted (printed as JSON on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from linepo.errors import InputError

from linepo.stages.preferences import SELECTIONS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pairs",
        help="preference pairs from judged samples (best vs worst, best vs second, oracle-labelled pairs)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--samples", required=True, type=Path, help="the samples parquet file that was judged")
    parser.add_argument("--judgments", required=True, type=Path, help="the judgments parquet file of `linepo judge`")
    parser.add_argument("--selection", default="best_vs_worst", choices=SELECTIONS,
                        help="best_vs_worst (the paper's text), first_vs_second (its public code), "
                             "random_pair or all_pairs (judged pairs labelled by the oracle's outcome); "
                             "default %(default)s")
    parser.add_argument("--use-outcomes", action="store_true",
                        help="score with the sampled 0/1 oracle outcomes instead of the probabilities")
    parser.add_argument("--out", required=True, type=Path, help="the preferences parquet file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linepo.stages.preferences import build_preferences

    if args.out.suffix != ".parquet":
        raise InputError(f"--out {args.out}: must end in .parquet")
    stats = build_preferences(args.samples, args.judgments, args.out, selection=args.selection,
                              use_outcomes=args.use_outcomes)
    print(f"linepo pairs: wrote {args.out}: {stats['pairs']} pairs of {stats['prompts']} prompts "
          f"({stats['dropped_tied_scores']} ties, {stats['dropped_identical_texts']} identical texts, "
          f"{stats['dropped_too_few_scored']} with too few scored samples, "
          f"{stats['failed_comparisons']} failed comparisons left out)", file=sys.stderr)
    print(json.dumps(stats, sort_keys=True))
    return 0
