"""``linepo prompts``: write a prompt set as K random shards, or as one file.

    linepo prompts --source HuggingFaceH4/ultrafeedback_binarized --split train_prefs \\
        --shards 3 --seed 0 --out-dir results/prompts/train      # shard-0.parquet ...
    linepo prompts --source alpaca_eval/eval_set.json --out results/prompts/eval.parquet

Everything is loaded and checked before the first file is written, and each file is
written atomically, so an error leaves no new or half-written file.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from linepo.errors import InputError

SHARD_NAME = "shard-{index}.parquet"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prompts",
        help="load prompts (local file or hub dataset), de-duplicate, shard, write parquet",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--source", required=True, help="a .jsonl/.json/.parquet file, a hub dataset name, or `embedded` (the generated prompts; --split train or eval)")
    parser.add_argument("--split", default=None, help="dataset split, e.g. train_prefs or test[:100] (default: the only one; 'train' for files)")
    parser.add_argument("--prompt-column", default=None, help="take prompts from this column instead of detecting the layout")
    parser.add_argument("--name", default=None, help="hub dataset configuration name")
    parser.add_argument("--revision", default=None, help="hub dataset revision (commit, tag or branch)")
    parser.add_argument("--max-prompts", type=int, default=None, help="keep only the first N prompts (smoke runs)")
    parser.add_argument("--max-prompt-chars", type=int, default=None,
                        help="drop prompts longer than this many characters, counted on stderr (default 20000; "
                             "0: no limit); sampling also drops prompts too long for the model")
    parser.add_argument("--shards", type=int, default=None, help="number of random shards K (with --out-dir)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle before sharding (default 0)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out-dir", type=Path, help="write DIR/shard-0.parquet ... DIR/shard-{K-1}.parquet")
    target.add_argument("--out", type=Path, help="write one .parquet file, in source order, no sharding")
    parser.set_defaults(func=run)


def _stale_shards(out_dir: Path, num_shards: int) -> list[str]:
    """Shard files of an earlier run with more shards, which a reader would mistake for ours."""
    if not out_dir.is_dir():
        return []
    names = [p.name for p in out_dir.iterdir() if (m := re.fullmatch(r"shard-(\d+)\.parquet", p.name)) and int(m.group(1)) >= num_shards]
    return sorted(names)


def run(args: argparse.Namespace) -> int:
    # Check the options before the (slow) load.
    if args.out_dir is not None:
        if args.shards is None:
            raise InputError("--shards: required with --out-dir")
        if args.shards < 1:
            raise InputError(f"--shards {args.shards}: must be at least 1")
        stale = _stale_shards(args.out_dir, args.shards)
        if stale:
            raise InputError(f"{args.out_dir}: holds {stale[0]} from a run with more shards; remove it or use another --out-dir")
    elif args.shards is not None:
        raise InputError("--shards: only with --out-dir; --out writes one unsharded file")
    elif args.out.suffix != ".parquet":
        raise InputError(f"--out {args.out}: must end in .parquet")
    if args.max_prompts is not None and args.max_prompts < 1:
        raise InputError(f"--max-prompts {args.max_prompts}: must be at least 1")
    if args.max_prompt_chars is not None and args.max_prompt_chars < 0:
        raise InputError(f"--max-prompt-chars {args.max_prompt_chars}: must be at least 0 (0: no limit)")

    import sys

    from linepo.stages.prompts import MAX_PROMPT_CHARS, drop_long, load_prompts, split_prompts, take
    from linepo.schemas import to_table, write_table

    max_chars = MAX_PROMPT_CHARS if args.max_prompt_chars is None else args.max_prompt_chars
    loaded = load_prompts(args.source, split=args.split, prompt_column=args.prompt_column, name=args.name, revision=args.revision)
    fitting, too_long = drop_long(loaded, max_chars)
    if too_long:
        if not fitting:
            raise InputError(f"{args.source}: all {len(loaded)} prompts are longer than {max_chars} characters; "
                             "raise --max-prompt-chars (config key max_prompt_chars)")
        print(f"linepo prompts: dropped {too_long} of {len(loaded)} prompts longer than {max_chars} characters "
              "(--max-prompt-chars, config key max_prompt_chars)", file=sys.stderr)
    rows = take(fitting, args.max_prompts)
    source_file = [args.source] if Path(args.source).is_file() else []  # a local file: recorded; a dataset id: not
    meta = {
        "source": args.source, "split": args.split, "prompt_column": args.prompt_column, "name": args.name,
        "revision": args.revision, "max_prompts": args.max_prompts, "num_loaded": len(loaded), "num_prompts": len(rows),
        "max_prompt_chars": max_chars, "num_too_long": too_long,
    }
    if args.out is not None:
        if any("dataset" in row for row in rows):  # AlpacaEval's subsets, for its model_outputs.json
            meta["datasets"] = {row["prompt_id"]: row.get("dataset") for row in rows}
        write_table(rows, args.out, "prompts", metadata=meta, inputs=source_file)
        print(f"wrote {len(rows)} prompts from {args.source} to {args.out}")
        return 0

    if args.shards > len(rows):
        raise InputError(f"--shards {args.shards}: more shards than prompts ({len(rows)}); an empty shard cannot train")
    shards = split_prompts(rows, args.shards, args.seed)
    # Build every table first: a type error then stops us before any file exists.
    metas = [{**meta, "seed": args.seed, "num_shards": args.shards, "shard": i} for i in range(args.shards)]
    tables = [to_table(shard, "prompts", m) for shard, m in zip(shards, metas)]
    for i, (table, m) in enumerate(zip(tables, metas)):
        write_table(table, args.out_dir / SHARD_NAME.format(index=i), "prompts", metadata=m, inputs=source_file)
    sizes = "/".join(str(len(s)) for s in shards)
    print(f"wrote {len(rows)} prompts from {args.source} as {args.shards} shards ({sizes}) to {args.out_dir}")
    return 0
