"""``linepo score``: add log π_ref(y±|x) and log μ_k(y±|x) to preference pairs, as a scored parquet.

    linepo score --preferences results/x/preferences.parquet [more.parquet ...] \\
        --reference results/sft/policy --anchor results/x/policy --out results/x/scored.parquet \\
        [--batch-size 32 --max-length 512 --dtype auto --deduplicate]

Log-probs are summed over the response tokens and EOS (see :mod:`linepo.stages.scoring`). When
--reference and --anchor are the same folder the model is run once. Stats (pairs/s,
tokens/s) go to stderr and, as JSON, to stdout. A bad input exits 2 with one line and
writes nothing.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

def register(subparsers) -> None:
    from linepo.settings import add_arguments
    from linepo.sources import DTYPES
    from linepo.stages.scoring import ScoringSettings

    parser = subparsers.add_parser("score", help="log-probs of preference pairs under the reference and anchor policies",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--preferences", required=True, nargs="+", type=Path,
                        help="preferences parquet file(s), concatenated in the given order")
    parser.add_argument("--reference", required=True, help="π_ref: policy folder or hub id")
    parser.add_argument("--anchor", required=True, help="μ_k, the policy that sampled the pairs (INPO's anchor)")
    parser.add_argument("--mixture", nargs="+", metavar="WEIGHT=FOLDER", default=(),
                        help="MNPO: the anchor log-probs are Σ weight·log π(y) over these policies")
    parser.add_argument("--out", required=True, type=Path, help="the scored parquet file to write")
    add_arguments(parser.add_argument_group("scoring settings"), ScoringSettings)
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="model dtype; default %(default)s")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own modelling code")
    parser.add_argument("--allow-pickle-weights", action="store_true", help="load pytorch_model.bin (pickle) weights when a folder has no safetensors")
    parser.set_defaults(func=run)


def run(args) -> int:
    from linepo.stages.scoring import score_preferences

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from linepo.settings import from_mapping, given
    from linepo.stages.scoring import ScoringSettings

    settings = from_mapping(ScoringSettings, given(args, ScoringSettings), source="flags", key_format="{flag}")
    stats = score_preferences(args.preferences, args.out, reference=args.reference, anchor=args.anchor,
                              batch_size=settings.batch_size, max_length=settings.max_length, dtype=args.dtype,
                              trust_remote_code=args.trust_remote_code,
                              allow_pickle_weights=args.allow_pickle_weights, mixture=parse_mixture(args.mixture),
                              deduplicate=settings.deduplicate)
    print(f"linepo score: wrote {args.out}: {stats['pairs']} pairs, {stats['models_run']} model(s), "
          f"{stats['pairs_per_s']} pairs/s, {stats['tokens_per_s']} tokens/s", file=sys.stderr)
    print(json.dumps(stats, sort_keys=True))
    return 0


def parse_mixture(items) -> list[tuple[str, float]]:
    """``--mixture 0.5=folder ...`` as ``[(folder, 0.5), ...]``."""
    from linepo.errors import InputError

    out = []
    for item in items:
        weight, sep, folder = item.partition("=")
        try:
            out.append((folder, float(weight)))
        except ValueError:
            sep = ""
        if not sep or not folder:
            raise InputError(f"--mixture {item}: expected WEIGHT=FOLDER")
    return out
