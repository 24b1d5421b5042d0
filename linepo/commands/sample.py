"""``linepo sample``: n responses per prompt from a policy, as a samples parquet.

    linepo sample --policy results/embedded/policy --prompts prompts.parquet --out samples.parquet \\
        --n 5 --temperature 0.8 --top-p 1.0 --max-new-tokens 64 --seed 0 [--backend transformers|vllm] [--batch-size 32]
    linepo sample --policy P --prompts Q --out S --config-json '{"n": 5, "temperature": 0.8}' --seed 7

The sampling flags are the fields of :class:`linepo.stages.sampling.SamplerSettings`
(``--config-json`` sets any of them; flags given win). Everything is checked before the
model is loaded, and the output is written atomically at the end, so a bad input exits 2
with one line and leaves no file.

--data-parallel N runs N worker processes, each on its own GPU (its own
--tensor-parallel-size GPUs with vllm) taken from CUDA_VISIBLE_DEVICES, on contiguous
blocks of the prompts (sizes differ by at most one: no prompt is dropped), and merges
their samples in prompt order into one file equal to the unsharded one (every row is
seeded by its prompt_id and sample_index): see :mod:`linepo.stages.parallel`.
"""

from __future__ import annotations

import json
import logging
import sys


def register(subparsers) -> None:
    from linepo.settings import add_arguments
    from linepo.sources import DTYPES
    from linepo.stages.sampling import SamplerSettings

    parser = subparsers.add_parser("sample", help="sample n responses per prompt from a policy",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="policy folder (save_pretrained layout) or hub id")
    parser.add_argument("--prompts", required=True, help="prompts parquet (columns prompt_id, prompt, source)")
    parser.add_argument("--out", required=True, help="samples parquet to write")
    parser.add_argument("--config-json", default=None, help="JSON object of sampling settings; flags given win")
    add_arguments(parser.add_argument_group("sampling settings"), SamplerSettings)
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own modelling code")
    parser.add_argument("--allow-pickle-weights", action="store_true", help="load pytorch_model.bin (pickle) weights when a folder has no safetensors")
    parser.add_argument("--data-parallel", type=int, default=1,
                        help="worker processes, one per GPU (per tensor-parallel group with vllm); default 1")
    parser.set_defaults(func=run)


def settings_from_args(args):
    """SamplerSettings: defaults, then --config-json, then the flags given; checked."""
    from linepo.settings import from_mapping, given, json_mapping
    from linepo.stages.sampling import SamplerSettings

    settings = SamplerSettings()
    if args.config_json:
        settings = from_mapping(SamplerSettings, json_mapping(args.config_json), source="--config-json")
    return from_mapping(SamplerSettings, given(args, SamplerSettings), source="flags", base=settings,
                        key_format="{flag}").validate()


def run(args) -> int:
    from linepo.errors import InputError
    from linepo.schemas import read_table, write_table
    from linepo.stages.sampling import make_sampler

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings = settings_from_args(args)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads: must be an integer >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    table = read_table(args.prompts, "prompts")
    prompts = table.select(["prompt_id", "prompt"]).to_pylist()
    if not prompts:
        raise InputError(f"{args.prompts}: no prompts")
    if args.data_parallel < 1:
        raise InputError(f"--data-parallel: must be an integer >= 1, got {args.data_parallel}")
    if args.data_parallel > 1 and len(prompts) > 1:
        return run_sharded(args, table, settings)
    sampler = make_sampler(
        args.policy, settings, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
        allow_pickle_weights=args.allow_pickle_weights,
    )
    rows = sampler.generate(prompts, source=args.prompts)
    write_table(rows, args.out, "samples", metadata={"policy": str(args.policy), "sampler": settings.__dict__},
                inputs=[args.policy, args.prompts], computed=True)
    print(f"wrote {len(rows)} samples ({len(prompts)} prompts x {settings.n}) to {args.out}")
    return 0


def worker_flags(args, settings) -> list[str]:
    """The flags that make a worker sample exactly as this command would."""
    import dataclasses

    flags = ["--config-json", json.dumps(dataclasses.asdict(settings), sort_keys=True), "--dtype", args.dtype]
    if args.device is not None:
        flags += ["--device", args.device]
    if args.threads is not None:
        flags += ["--threads", args.threads]
    if args.trust_remote_code:
        flags.append("--trust-remote-code")
    if args.allow_pickle_weights:
        flags.append("--allow-pickle-weights")
    return [str(flag) for flag in flags]


def fitting_prompts(args, table, settings):
    """``table`` without the prompts too long for the policy (:func:`linepo.stages.fit.fit_prompts`),
    judged from its tokenizer and config alone (no weights are loaded). When those do not load,
    nothing is dropped here: the workers fail loading the policy and say why."""
    import pyarrow as pa
    from transformers import AutoConfig, AutoTokenizer

    from linepo.stages.models import load_errors, resolve_policy
    from linepo.stages.fit import fit_prompts, max_positions

    source = resolve_policy(args.policy)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        config = AutoConfig.from_pretrained(source, trust_remote_code=args.trust_remote_code)
    except load_errors():
        return table
    prompts = table.select(["prompt_id", "prompt"]).to_pylist()
    kept = fit_prompts(prompts, tokenizer, max_positions(config, tokenizer), settings.max_new_tokens, args.prompts)
    if len(kept) == len(prompts):
        return table
    ids = {p["prompt_id"] for p in kept}
    return table.filter(pa.array([pid in ids for pid in table.column("prompt_id").to_pylist()]))


def run_sharded(args, table, settings) -> int:
    """Sample contiguous prompt blocks in ``args.data_parallel`` workers; merge in prompt order."""
    from pathlib import Path

    from linepo.schemas import write_table
    from linepo.stages.models import resolve_policy
    from linepo.stages.parallel import run_sharded_command, shard_bounds
    from linepo.stages.sampling import check_prompts

    check_prompts(table.select(["prompt_id", "prompt"]).to_pylist())  # a repeated id would hide in two shards
    resolve_policy(args.policy)  # a missing policy fails here, once, not in every worker
    table = fitting_prompts(args, table, settings)  # dropped and counted once, not per worker
    bounds = shard_bounds(table.num_rows, args.data_parallel)
    per_shard = settings.tensor_parallel_size if settings.backend == "vllm" else 1
    merged = run_sharded_command(
        "sample", Path(args.out), bounds, per_shard, "--data-parallel",
        write_input=lambda k, lo, hi, path: write_table(table.slice(lo, hi - lo).to_pylist(), path, "prompts"),
        worker_args=lambda inputs, output: ["--policy", str(args.policy), "--prompts", str(inputs),
                                            "--out", str(output), *worker_flags(args, settings)],
        kind="samples")
    if isinstance(merged, int):
        return merged
    write_table(merged.rows, args.out, "samples", metadata={"policy": str(args.policy), "sampler": settings.__dict__},
                inputs=[args.policy, args.prompts], shards=merged.metadata)
    print(f"wrote {len(merged.rows)} samples ({table.num_rows} prompts x {settings.n}) to {args.out} "
          f"from {len(bounds)} shards in {merged.seconds:.1f} s")
    return 0
