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
:mod:`linepo.stages.parallel`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from linepo.errors import InputError
from linepo.settings import fraction

#: what the keys the judge factory reads (linepo.stages.judges.base.FACTORY_KEYS) mean: (kind, doc);
#: their types and defaults live in code, not in a settings dataclass
_FACTORY_KEY_DOCS = {
    "type": "the judge; the other keys depend on it",
    "seed": "seed of the oracle's sampled 0/1 outcomes; linepo judge --seed wins over it",
    "max_failed_fraction": "a judging step whose share of failed comparisons is above this fails, "
                           "naming why, instead of going on with what is left",
}


def _factory_keys(types) -> list[tuple[str, str, str]]:
    """``(name, kind, doc)`` of the keys every judge config may have (``type``: one of ``types``)."""
    from linepo.settings import shown_default, value_range
    from linepo.stages.judges import JUDGE_TYPES
    from linepo.stages.judges.base import DEFAULT_MAX_FAILED_FRACTION, FACTORY_KEYS

    kinds = {"type": "str: " + " | ".join(types or JUDGE_TYPES) + "; required",
             "seed": "int; default 0",
             "max_failed_fraction": f"float {value_range(0, 1)}; default {shown_default(DEFAULT_MAX_FAILED_FRACTION)}"}
    return [(key, kinds.get(key, "see linepo.stages.judges"), _FACTORY_KEY_DOCS.get(key, "read by the judge factory"))
            for key in FACTORY_KEYS]


def judge_config_keys(types=None, width: int = 79) -> str:
    """The keys a ``--judge-config`` may have, by judge type, with their types, defaults and docs.

    Built from the judges' settings dataclasses (:func:`linepo.stages.judges.judge_settings`)
    and the factory's keys, so a new setting is listed without editing this. ``types``: the
    judge types to list (default all). The epilog of every command that takes --judge-config.
    """
    from linepo.settings import describe
    from linepo.stages.judges import JUDGE_TYPES, judge_settings

    def block(title: str, keys) -> list[str]:
        lines = [title]
        for name, kind, doc in keys:
            lines += textwrap.wrap(f"{name} ({kind}): {doc}", width, initial_indent="  ",
                                   subsequent_indent="      ", break_on_hyphens=False)
        return lines

    lines = textwrap.wrap("judge config keys (--judge-config: inline JSON or a .json/.yaml file; an unknown key "
                          "is an error):", width) + [""]
    lines += block("every judge type:", _factory_keys(types))
    for judge_type in types or JUDGE_TYPES:
        cls = judge_settings(judge_type)
        lines += ["", *block(f"type {judge_type} ({cls.__name__}):", describe(cls))]
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--max-failed-fraction", type=fraction, default=None,
                        help="fail when a larger share of comparisons failed (default: the config's "
                             "max_failed_fraction, else 0.05)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linepo.stages.judges import load_judge_config
    from linepo.stages.preferences import judge_samples

    if args.out.suffix != ".parquet":
        raise InputError(f"--out {args.out}: must end in .parquet")
    if args.judge_config is None:
        config, source = None, "embedded judge config"
    else:
        config, source = load_judge_config(args.judge_config)
        if "data_parallel" in config:  # how many workers judge is a flag, not part of what a judge is
            raise InputError(f"{source} key data_parallel: not a judge setting; give --data-parallel")
    if args.data_parallel < 1:
        raise InputError(f"--data-parallel: must be an integer >= 1, got {args.data_parallel}")
    if args.data_parallel > 1:
        code = run_sharded(args, config, source)
        if code is not None:
            return code
    stats = judge_samples(args.samples, config, args.out, seed=args.seed, source=source,
                          progress=False if args.no_progress else None, max_failed_fraction=args.max_failed_fraction)
    print(f"linepo judge: wrote {args.out}: {stats['comparisons']} comparisons of {stats['prompts']} prompts, "
          f"{stats['failed']} failed, {stats['comparisons_per_s']} comparisons/s", file=sys.stderr)
    print(json.dumps(stats, sort_keys=True))
    return 0


def run_sharded(args, config: dict | None, source: str) -> int | None:
    """Judge blocks of whole prompts in ``args.data_parallel`` workers; merge in prompt order.

    Returns the exit code, or None when there are fewer than two prompts (nothing to share).
    """
    from linepo.schemas import read_table, write_table
    from linepo.stages.parallel import run_sharded_command, shard_bounds
    from linepo.stages.preferences import group_samples

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
    prompt_ids = table.column("prompt_id").to_pylist()

    def write_input(k, lo, hi, path):
        rows = [i for i, pid in enumerate(prompt_ids) if lo <= position[pid] < hi]
        write_table(table.take(rows).to_pylist(), path, "samples")

    def worker_args(inputs, output):
        extra = ["--judge-config", json.dumps(config)] if config is not None else []
        extra += ["--seed", str(args.seed)] if args.seed is not None else []
        if args.max_failed_fraction is not None:
            extra += ["--max-failed-fraction", repr(args.max_failed_fraction)]
        return ["--samples", str(inputs), "--out", str(output), "--no-progress", *extra]

    merged = run_sharded_command("judge", args.out, bounds, 1, "--data-parallel", write_input=write_input,
                                 worker_args=worker_args, kind="judgments")
    if isinstance(merged, int):
        return merged
    counts: dict[str, int] = {}
    for shard_metadata in merged.metadata:
        for key, value in shard_metadata.get("counts", {}).items():
            counts[key] = counts.get(key, 0) + value
    metadata = {**merged.metadata[-1], "counts": counts}
    write_table(merged.rows, args.out, "judgments", metadata=metadata, inputs=[args.samples],
                shards=merged.metadata)
    stats = {**counts, "shards": len(bounds), "seconds": round(merged.seconds, 3),
             "comparisons_per_s": round(counts.get("comparisons", 0) / merged.seconds, 1) if merged.seconds > 0 else None}
    print(f"linepo judge: wrote {args.out}: {stats.get('comparisons')} comparisons of {stats.get('prompts')} prompts, "
          f"{stats.get('failed')} failed, {stats['comparisons_per_s']} comparisons/s over {len(bounds)} shards",
          file=sys.stderr)
    print(json.dumps(stats, sort_keys=True))
    return 0
