"""``linepo judge``: judge every pair of each prompt's samples and write a judgments file.

    linepo judge --samples results/x/samples.parquet --out results/x/judgments.parquet --seed 0
    linepo judge --samples S --judge-config configs/offsetbias.yaml --out J --seed 0
    linepo judge --samples S --judge-config '{"type": "reward_model", "model": "path/to/rm"}' --out J

Without ``--judge-config`` the embedded synthetic judge is used (the paper's 3×3 game over
brief / plain / detailed responses). Bad input (unknown judge type, a matrix that is not a
preference matrix, a missing model, a missing or schema-mismatched samples file) exits 2
with one line naming it, and writes nothing.

--data-parallel N runs N worker processes, each on its own GPU from CUDA_VISIBLE_DEVICES,
on contiguous blocks of whole prompts (sizes differ by at most one: no prompt is
dropped), and concatenates their judgments in prompt order into the file the unsharded
command writes (the oracle's coin is a hash of seed, prompt and texts): see
:mod:`linepo.stages.parallel`. A ``data_parallel`` key in the judge config is ignored here.
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
    parser.add_argument("--data-parallel", type=int, default=1,
                        help="worker processes, one per GPU, on blocks of whole prompts; default 1")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linepo.stages.judges import load_judge_config
    from linepo.stages.parallel import recipe_view
    from linepo.stages.preferences import judge_samples

    if args.out.suffix != ".parquet":
        raise InputError(f"--out {args.out}: must end in .parquet")
    if args.judge_config is None:
        config, source = None, "embedded judge config"
    else:
        config, source = load_judge_config(args.judge_config)
        config = recipe_view(config)  # how many workers is not part of what the judge is
    if args.data_parallel < 1:
        raise InputError(f"--data-parallel: must be an integer >= 1, got {args.data_parallel}")
    if args.data_parallel > 1:
        code = run_sharded(args, config, source)
        if code is not None:
            return code
    stats = judge_samples(args.samples, config, args.out, seed=args.seed, source=source,
                          progress=False if args.no_progress else None)
    print(f"linepo judge: wrote {args.out}: {stats['comparisons']} comparisons of {stats['prompts']} prompts, "
          f"{stats['failed']} failed, {stats['comparisons_per_s']} comparisons/s", file=sys.stderr)
    print(json.dumps(stats, sort_keys=True))
    return 0


def run_sharded(args, config: dict | None, source: str) -> int | None:
    """Judge blocks of whole prompts in ``args.data_parallel`` workers; merge in prompt order.

    Returns the exit code, or None when there are fewer than two prompts (nothing to share).
    """
    import time

    from linepo.stages.parallel import device_groups, run_shards, shard_bounds, shard_folder
    from linepo.stages.preferences import group_samples
    from linepo.schemas import read_metadata, read_table, write_table

    table = read_table(args.samples, "samples")
    groups = group_samples(table, args.samples)  # a repeated (prompt_id, sample_index) fails here, once
    if config is not None and config.get("type") == "synthetic":
        from linepo.stages.judges import make_judge

        make_judge(config, source=source)  # cheap: a bad synthetic config fails here, once
    order = list(groups)  # prompts in order of first appearance, as the tournament visits them
    if len(order) < 2:
        return None
    position = {pid: i for i, pid in enumerate(order)}
    bounds = shard_bounds(len(order), args.data_parallel)
    devices = device_groups(len(bounds), 1, "--data-parallel")
    prompt_ids = table.column("prompt_id").to_pylist()
    start = time.perf_counter()
    with shard_folder(args.out) as folder:
        for k, (lo, hi) in enumerate(bounds):
            rows = [i for i, pid in enumerate(prompt_ids) if lo <= position[pid] < hi]
            write_table(table.take(rows).to_pylist(), folder / f"samples-{k}.parquet", "samples")

        def worker_args(k):
            extra = ["--judge-config", json.dumps(config)] if config is not None else []
            extra += ["--seed", str(args.seed)] if args.seed is not None else []
            return ["--samples", str(folder / f"samples-{k}.parquet"),
                    "--out", str(folder / f"judgments-{k}.parquet"), "--no-progress", *extra]

        failed = run_shards("judge", bounds, devices, worker_args)
        if failed is not None:
            return failed
        merged: dict[str, list] = {}
        counts: dict[str, int] = {}
        metadata = None
        for k in range(len(bounds)):
            path = folder / f"judgments-{k}.parquet"
            for name, values in read_table(path, "judgments").to_pydict().items():
                merged.setdefault(name, []).extend(values)
            shard_metadata = read_metadata(path)
            for key, value in shard_metadata.get("counts", {}).items():
                counts[key] = counts.get(key, 0) + value
            metadata = shard_metadata
    metadata["counts"] = counts
    write_table(merged, args.out, "judgments", metadata=metadata)
    seconds = time.perf_counter() - start
    stats = {**counts, "shards": len(bounds), "seconds": round(seconds, 3),
             "comparisons_per_s": round(counts.get("comparisons", 0) / seconds, 1) if seconds > 0 else None}
    print(f"linepo judge: wrote {args.out}: {stats.get('comparisons')} comparisons of {stats.get('prompts')} prompts, "
          f"{stats.get('failed')} failed, {stats['comparisons_per_s']} comparisons/s over {len(bounds)} shards",
          file=sys.stderr)
    print(json.dumps(stats, sort_keys=True))
    return 0
