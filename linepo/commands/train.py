"""``linepo train``: one prox step: fit a policy to scored preference pairs (DPO, IPO, INPO or SPPO loss).

    linepo train --policy results/x/policy --scored results/x/scored.parquet [more.parquet ...] \\
        --out results/y/policy --resume-dir results/y/policy.partial \\
        --loss inpo --eta 500 --eta-tau 0.333 --epochs 3 --batch-size 32 --learning-rate 5e-7 \\
        [--gradient-accumulation-steps 1] [--config-json '{"warmup_ratio": 0.1, "deepspeed": "ds.json"}']

--eta is the paper's step size η (KL weight 1/η; DPO's β = 1/η); --eta-tau is ητ ∈ (0, 1]
(INPO only). --config-json takes any field of ``linepo.training.TrainSettings`` (or the
workflow config's training keys, e.g. ``batch_size``); flags given on the command line win
over it. Resume checkpoints go to --resume-dir, which must lie outside --out; a rerun
after a kill resumes from its newest checkpoint, and the folder is removed after success.
Bad input exits 2 with one line and writes nothing; a non-finite loss exits 1 with one
line and writes no policy. Stats (tokens/s, steps) go to stdout as JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

LOSSES = ("dpo", "ipo", "inpo", "sppo")  # = linepo.losses.LOSSES, kept light

#: flag destination -> TrainSettings field
_FLAG_FIELDS = {
    "loss": "loss", "eta": "eta", "eta_tau": "eta_tau", "epochs": "epochs", "batch_size": "per_device_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "learning_rate": "learning_rate",
    "lr_scheduler_type": "lr_scheduler_type", "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay",
    "max_length": "max_length", "seed": "seed", "bf16": "bf16", "save_steps": "save_steps",
    "logging_steps": "logging_steps", "deepspeed": "deepspeed", "fsdp": "fsdp", "trust_remote_code": "trust_remote_code",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a policy on scored preference pairs (one prox step)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the parent policy folder (or hub id) to start from")
    parser.add_argument("--scored", required=True, nargs="+", type=Path, help="scored parquet file(s), in order")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the trained policy to")
    parser.add_argument("--resume-dir", required=True, type=Path,
                        help="side folder for resume checkpoints, outside --out (e.g. OUT.partial)")
    parser.add_argument("--loss", choices=LOSSES, default=None, help="default inpo")
    parser.add_argument("--eta", type=float, default=None, help="step size η > 0 (KL weight 1/η = DPO β); default 500")
    parser.add_argument("--eta-tau", type=float, default=None, help="ητ in (0, 1], INPO only; default 1/3")
    parser.add_argument("--epochs", type=float, default=None, help="default 3")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per device per step; default 32")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=None, help="default 1")
    parser.add_argument("--learning-rate", type=float, default=None, help="default 5e-7")
    parser.add_argument("--lr-scheduler-type", default=None, help="default linear")
    parser.add_argument("--warmup-ratio", type=float, default=None, help="default 0")
    parser.add_argument("--weight-decay", type=float, default=None, help="default 0")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per sequence; default 512")
    parser.add_argument("--seed", type=int, default=None, help="default 0")
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default=None,
                        help="bf16 mixed precision; default auto (only on a CUDA GPU with bf16)")
    parser.add_argument("--save-steps", type=int, default=None, help="optimizer steps between checkpoints; default 50")
    parser.add_argument("--logging-steps", type=int, default=None, help="default 10")
    parser.add_argument("--deepspeed", default=None, help="path to a DeepSpeed config JSON")
    parser.add_argument("--fsdp", default=None, help="TrainingArguments.fsdp, e.g. 'full_shard auto_wrap'")
    parser.add_argument("--config-json", default=None,
                        help="JSON object of training settings (TrainSettings fields); flags win over it")
    parser.add_argument("--trust-remote-code", action="store_true", default=None,
                        help="run the checkpoint's own modelling code")
    parser.set_defaults(func=run)


def settings_from_args(args):
    """TrainSettings: defaults, then --config-json, then the flags given.

    Raises:
        InputError: --config-json is not a JSON object or names an unknown setting; a bad value.
    """
    from linepo.errors import InputError
    from linepo.training import TrainSettings

    settings = TrainSettings()
    if args.config_json:
        try:
            values = json.loads(args.config_json)
        except ValueError as err:
            raise InputError(f"--config-json: not valid JSON ({err})") from err
        if not isinstance(values, dict):
            raise InputError("--config-json: must be a JSON object of training settings")
        settings = settings.updated(values, "--config-json")
    flags = {field: getattr(args, dest) for dest, field in _FLAG_FIELDS.items() if getattr(args, dest) is not None}
    return settings.updated(flags, "flags").validate()


def run(args) -> int:
    from linepo.training import NonFiniteLossError, train_policy

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings = settings_from_args(args)
    try:
        stats = train_policy(args.policy, args.scored, args.out, resume_dir=args.resume_dir, settings=settings)
    except NonFiniteLossError as err:
        print(f"linepo train: error: {err}", file=sys.stderr)
        return 1
    print(f"linepo train: wrote {args.out}: {stats['global_step']} steps (resumed at {stats['resumed_from_step']}), "
          f"{stats['tokens_per_s']} tokens/s", file=sys.stderr)
    print(json.dumps(stats, sort_keys=True))
    return 0
