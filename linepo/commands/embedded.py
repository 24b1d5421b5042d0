"""``linepo embedded``: build the embedded default policy, or write its prompts.

    linepo embedded build --out results/embedded/policy --seed 0 --steps 200
    linepo embedded prompts --out results/embedded/prompts_train.parquet --split train --num 400
"""

from __future__ import annotations

import json
import logging
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("embedded", help="the embedded default policy (no download needed)")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))

    build = actions.add_parser("build", help="train the embedded tokenizer and SFT policy; write it to --out")
    build.add_argument("--out", required=True, help="policy folder to write (safetensors + tokenizer)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--steps", type=int, default=200, help="SFT optimizer steps (default 200: about a minute)")
    build.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fast and reproducible here)")
    build.add_argument(
        "--style-mix", type=float, nargs=3, default=None, metavar=("BRIEF", "PLAIN", "DETAILED"),
        help="distribution of response styles in the SFT data (default 0.2 0.5 0.3)",
    )
    build.add_argument("--continuations", choices=["fixed", "varied"], default="fixed",
                       help="one answer text per (prompt, style) (default), or varied phrasings")
    build.set_defaults(func=run_build)

    prompts = actions.add_parser("prompts", help="write embedded prompts as a prompts parquet")
    prompts.add_argument("--out", required=True, help="prompts parquet to write")
    prompts.add_argument("--split", choices=["train", "eval"], default="train")
    prompts.add_argument("--num", type=int, default=None, help="first N prompts of the split (default all)")
    prompts.set_defaults(func=run_prompts)


def run_build(args) -> int:
    from linepo import toy as embedded

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    kwargs = {} if args.style_mix is None else {"style_mix": args.style_mix}
    summary = embedded.build(args.out, seed=args.seed, steps=args.steps, threads=args.threads,
                             continuations=args.continuations, **kwargs)
    print(json.dumps(summary, sort_keys=True))
    return 0


def run_prompts(args) -> int:
    from linepo import toy as embedded
    from linepo.schemas import write_table

    rows = embedded.prompt_rows(args.split, args.num)
    write_table(rows, args.out, "prompts", metadata={"source": f"{embedded.SOURCE_LABEL}:{args.split}"})
    print(f"wrote {len(rows)} {args.split} prompts to {args.out}")
    return 0
