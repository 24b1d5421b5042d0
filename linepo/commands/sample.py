"""``linepo sample``: n responses per prompt from a policy, as a samples parquet.

    linepo sample --policy results/embedded/policy --prompts prompts.parquet --out samples.parquet \\
        --n 5 --temperature 0.8 --top-p 1.0 --max-new-tokens 64 --seed 0 [--backend transformers|vllm] [--batch-size 32]

Everything is checked before the model is loaded, and the output is written atomically
at the end, so a bad input exits 2 with one line and leaves no file.

--data-parallel N runs N worker processes, each on its own GPU (its own
--tensor-parallel-size GPUs with vllm) taken from CUDA_VISIBLE_DEVICES, on contiguous
blocks of the prompts (sizes differ by at most one: no prompt is dropped), and merges
their samples in prompt order into one file equal to the unsharded one (every row is
seeded by its prompt_id and sample_index): see :mod:`linepo.stages.parallel`.
"""

from __future__ import annotations

import logging
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="sample n responses per prompt from a policy")
    parser.add_argument("--policy", required=True, help="policy folder (save_pretrained layout) or hub id")
    parser.add_argument("--prompts", required=True, help="prompts parquet (columns prompt_id, prompt, source)")
    parser.add_argument("--out", required=True, help="samples parquet to write")
    parser.add_argument("--n", type=int, default=1, help="samples per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per generate call (transformers)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per model (vllm)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own modelling code")
    parser.add_argument("--data-parallel", type=int, default=1,
                        help="worker processes, one per GPU (per tensor-parallel group with vllm); default 1")
    parser.set_defaults(func=run)


def run(args) -> int:
    from linepo.errors import InputError
    from linepo.stages.sampling import SamplerSettings, make_sampler
    from linepo.schemas import read_table, write_table

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings = SamplerSettings(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        backend=args.backend,
        tensor_parallel_size=args.tensor_parallel_size,
    ).validate()
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
        args.policy, settings, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )
    rows = sampler.generate(prompts)
    write_table(rows, args.out, "samples", metadata={"policy": str(args.policy), "sampler": settings.__dict__})
    print(f"wrote {len(rows)} samples ({len(prompts)} prompts x {settings.n}) to {args.out}")
    return 0


def worker_flags(args) -> list[str]:
    """The flags that make a worker sample exactly as this command would."""
    flags = ["--n", args.n, "--temperature", args.temperature, "--top-p", args.top_p,
             "--max-new-tokens", args.max_new_tokens, "--seed", args.seed, "--backend", args.backend,
             "--batch-size", args.batch_size, "--tensor-parallel-size", args.tensor_parallel_size,
             "--dtype", args.dtype]
    if args.device is not None:
        flags += ["--device", args.device]
    if args.threads is not None:
        flags += ["--threads", args.threads]
    if args.trust_remote_code:
        flags.append("--trust-remote-code")
    return [str(flag) for flag in flags]


def run_sharded(args, table, settings) -> int:
    """Sample contiguous prompt blocks in ``args.data_parallel`` workers; merge in prompt order."""
    import time
    from pathlib import Path

    from linepo.stages.models import resolve_policy
    from linepo.stages.parallel import device_groups, run_shards, shard_bounds, shard_folder
    from linepo.stages.sampling import check_prompts
    from linepo.schemas import read_table, write_table

    check_prompts(table.select(["prompt_id", "prompt"]).to_pylist())  # a repeated id would hide in two shards
    resolve_policy(args.policy)  # a missing policy fails here, once, not in every worker
    bounds = shard_bounds(table.num_rows, args.data_parallel)
    per_shard = settings.tensor_parallel_size if settings.backend == "vllm" else 1
    devices = device_groups(len(bounds), per_shard, "--data-parallel")
    out = Path(args.out)
    start = time.perf_counter()
    with shard_folder(out) as folder:
        for k, (lo, hi) in enumerate(bounds):
            write_table(table.slice(lo, hi - lo).to_pylist(), folder / f"prompts-{k}.parquet", "prompts")
        failed = run_shards("sample", bounds, devices, lambda k: [
            "--policy", str(args.policy), "--prompts", str(folder / f"prompts-{k}.parquet"),
            "--out", str(folder / f"samples-{k}.parquet"), *worker_flags(args)])
        if failed is not None:
            return failed
        rows = []
        for k in range(len(bounds)):
            rows.extend(read_table(folder / f"samples-{k}.parquet", "samples").to_pylist())
    write_table(rows, out, "samples", metadata={"policy": str(args.policy), "sampler": settings.__dict__})
    seconds = time.perf_counter() - start
    print(f"wrote {len(rows)} samples ({table.num_rows} prompts x {settings.n}) to {args.out} "
          f"from {len(bounds)} shards in {seconds:.1f} s")
    return 0
