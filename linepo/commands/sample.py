"""``linepo sample``: n responses per prompt from a policy, as a samples parquet.

    linepo sample --policy results/embedded/policy --prompts prompts.parquet --out samples.parquet \\
        --n 5 --temperature 0.8 --top-p 1.0 --max-new-tokens 64 --seed 0 [--backend transformers|vllm] [--batch-size 32]

Everything is checked before the model is loaded, and the output is written atomically
at the end, so a bad input exits 2 with one line and leaves no file.
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
    parser.set_defaults(func=run)


def run(args) -> int:
    from linepo.errors import InputError
    from linepo.sampling import SamplerSettings, make_sampler
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
    prompts = read_table(args.prompts, "prompts").select(["prompt_id", "prompt"]).to_pylist()
    if not prompts:
        raise InputError(f"{args.prompts}: no prompts")
    sampler = make_sampler(
        args.policy, settings, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )
    rows = sampler.generate(prompts)
    write_table(rows, args.out, "samples", metadata={"policy": str(args.policy), "sampler": settings.__dict__})
    print(f"wrote {len(rows)} samples ({len(prompts)} prompts x {settings.n}) to {args.out}")
    return 0
