"""``linepo sft``: fine-tune a base model on chats (assistant turns only) into an SFT policy.

    linepo sft --base Qwen/Qwen2-1.5B --data HuggingFaceH4/ultrachat_200k --split train_sft \\
        --out sft/model [--resume-dir sft/model.partial] [--tokenizer DIR] [--epochs 1] [--batch-size 32] \\
        [--learning-rate 2e-5] [--warmup-ratio 0.03] [--max-length 2048] [--max-examples N]

The workflow runs it for ``policy.sft: build`` (rule ``sft_build``, settings under
``policy.build``); see :mod:`linepo.stages.sft`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def register(subparsers) -> None:
    from linepo.stages.sft import SFTSettings

    defaults = SFTSettings()
    p = subparsers.add_parser("sft", help="supervised fine-tuning of a base model on chats (the SFT policy)")
    p.add_argument("--base", required=True, help="base model folder or hub id")
    p.add_argument("--tokenizer", default=None, help="tokenizer (with chat template) when the base has none")
    p.add_argument("--data", required=True, help="chats: a local jsonl/json/parquet file or a hub dataset")
    p.add_argument("--split", default=None, help="dataset split, e.g. train_sft")
    p.add_argument("--messages-column", default="messages", help="column with the list of {role, content}")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume-dir", type=Path, default=None,
                   help="side folder for resume checkpoints, outside --out (default: OUT.partial, beside --out)")
    p.add_argument("--config-json", default=None, help="JSON object of SFT settings (SFTSettings fields)")
    for field in ("epochs", "batch_size", "learning_rate", "warmup_ratio", "max_length", "max_examples", "seed"):
        kind = float if field in ("epochs", "learning_rate", "warmup_ratio") else int
        p.add_argument(f"--{field.replace('_', '-')}", type=kind, default=None,
                       help=f"default {getattr(defaults, field)}")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--allow-pickle-weights", action="store_true", help="load pytorch_model.bin (pickle) weights when a folder has no safetensors")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    from linepo.commands.train import default_resume_dir
    from linepo.errors import InputError
    from linepo.settings import json_mapping
    from linepo.stages.sft import SFTSettings, train_sft

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    values = {}
    if args.config_json:
        values = json_mapping(args.config_json)
        known = {f.name for f in dataclasses.fields(SFTSettings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"--config-json: unknown SFT setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    for field in ("epochs", "batch_size", "learning_rate", "warmup_ratio", "max_length", "max_examples", "seed"):
        if getattr(args, field) is not None:
            values[field] = getattr(args, field)
    resume_dir = args.resume_dir if args.resume_dir is not None else default_resume_dir(args.out)
    stats = train_sft(args.base, args.data, args.out, resume_dir=resume_dir, settings=SFTSettings(**values),
                      tokenizer=args.tokenizer, split=args.split, messages_column=args.messages_column,
                      trust_remote_code=args.trust_remote_code, allow_pickle_weights=args.allow_pickle_weights)
    print(json.dumps(stats, sort_keys=True))
    return 0
