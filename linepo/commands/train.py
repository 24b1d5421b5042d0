"""``linepo train``: one prox step: fit a policy to scored preference pairs (DPO, IPO, INPO or SPPO loss).

    linepo train --policy results/x/policy --scored results/x/scored.parquet [more.parquet ...] \\
        --out results/y/policy [--resume-dir results/y/policy.partial] \\
        --loss inpo --eta 500 --eta-tau 0.333 --epochs 3 --batch-size 32 --learning-rate 5e-7 \\
        [--gradient-accumulation-steps 1] [--config-json '{"warmup_ratio": 0.1, "deepspeed": "ds.json"}'] \\
        [--num-processes 4 [--accelerate-config configs/accelerate/fsdp.yaml]]

--batch-size is the *global* batch: pairs per optimizer step over all processes; each
process takes batch-size / (num-processes × gradient-accumulation-steps) pairs per forward,
so a step trains on the same pairs whatever the process count (the 2-process result equals
the 1-process one up to float rounding: tests/test_training_multiprocess.py).

--num-processes N > 1 trains data-parallel (DDP; one process per GPU, gloo on CPU): the
command checks its inputs, then re-runs itself under ``accelerate launch`` (a free port,
``--multi_gpu``, or the DeepSpeed/FSDP set-up of --accelerate-config, see
configs/accelerate/). Run by hand under ``accelerate launch`` / torchrun it trains in the
processes it is given. Only rank 0 writes the policy (atomically) and removes the side folder.

--eta is the paper's step size η (KL weight 1/η; DPO's β = 1/η); --eta-tau is ητ ∈ (0, 1]
(INPO only). --config-json takes any field of ``linepo.stages.training.TrainSettings`` (or the
workflow config's training keys, e.g. ``batch_size``); flags given on the command line win
over it. Resume checkpoints go to --resume-dir (default OUT.partial, beside --out), which
must lie outside --out; a rerun after a kill resumes from its newest checkpoint, and the
folder is removed after success.
--prompts-per-batch K makes each optimizer step all pairs of K prompts, each distinct response
forwarded once (one process, no gradient accumulation).
Bad input exits 2 with one line and writes nothing; a non-finite loss exits 1 with one
line and writes no policy. Stats (tokens/s, steps) go to stdout as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

def register(subparsers) -> None:
    from linepo.settings import add_arguments
    from linepo.stages.training.settings import TrainSettings

    parser = subparsers.add_parser("train", help="train a policy on scored preference pairs (one prox step)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the parent policy folder (or hub id) to start from")
    parser.add_argument("--scored", required=True, nargs="+", type=Path, help="scored parquet file(s), in order")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the trained policy to")
    parser.add_argument("--validation", nargs="+", type=Path, default=[],
                        help="scored held-out pairs: validation loss every --eval-steps and at each epoch's end; "
                             "the lowest-loss checkpoint is kept (unless --no-select-best)")
    parser.add_argument("--resume-dir", type=Path, default=None,
                        help="side folder for resume checkpoints, outside --out; removed after success "
                             "(default: OUT.partial, beside --out)")
    parser.add_argument("--config-json", default=None,
                        help="JSON object of training settings (TrainSettings fields); flags win over it")
    add_arguments(parser.add_argument_group("training settings (linepo.stages.training.TrainSettings)"),
                  TrainSettings)
    parser.add_argument("--trust-remote-code", action="store_true", default=None,
                        help="run the checkpoint's own modelling code")
    parser.add_argument("--allow-pickle-weights", action="store_true", default=None,
                        help="load pytorch_model.bin (pickle) weights when a folder has no safetensors")
    parser.add_argument("--num-processes", type=int, default=None,
                        help="data-parallel processes (one per GPU); > 1 launches `accelerate launch`; default 1 "
                             "(or WORLD_SIZE when already launched)")
    parser.add_argument("--accelerate-config", type=Path, default=None,
                        help="accelerate config file for the launch (DeepSpeed ZeRO, FSDP: configs/accelerate/)")
    parser.set_defaults(func=run)


def settings_from_args(args):
    """TrainSettings: defaults, then --config-json, then the flags given.

    Raises:
        InputError: --config-json is not a JSON object or names an unknown setting; a bad value.
    """
    from linepo.settings import given, json_mapping
    from linepo.stages.training.settings import TrainSettings

    settings = TrainSettings()
    if args.config_json:
        settings = settings.updated(json_mapping(args.config_json), "--config-json")
    flags = given(args, TrainSettings)
    if args.trust_remote_code:
        flags["trust_remote_code"] = True
    if args.allow_pickle_weights:
        flags["allow_pickle_weights"] = True
    return settings.updated(flags, "flags").validate()


def run(args) -> int:
    from linepo.errors import InputError
    from linepo.stages.training import NonFiniteLossError, is_main_process, train_policy, world_size

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING, format="%(message)s",
                            stream=sys.stderr)
    settings = settings_from_args(args)
    if args.resume_dir is None:
        args.resume_dir = default_resume_dir(args.out)
    if args.num_processes is not None and args.num_processes < 1:
        raise InputError(f"--num-processes: must be at least 1, got {args.num_processes}")
    settings.check_prompts_per_batch(args.num_processes or world_size())
    if args.accelerate_config is not None and not args.accelerate_config.is_file():
        raise InputError(f"--accelerate-config {args.accelerate_config}: file not found")
    launched = os.environ.get("WORLD_SIZE")
    if launched is None and (args.num_processes or 1) > 1:
        return launch(args, settings)
    if launched is not None and args.num_processes is not None and launched != str(args.num_processes):
        raise InputError(f"--num-processes {args.num_processes}: but launched with WORLD_SIZE={launched}")
    try:
        stats = train_policy(args.policy, args.scored, args.out, resume_dir=args.resume_dir, settings=settings,
                             validation=args.validation)
    except NonFiniteLossError as err:
        if is_main_process():
            print(f"linepo train: error: {err}", file=sys.stderr)
        return 1
    if is_main_process():
        print(f"linepo train: wrote {args.out}: {stats['global_step']} steps (resumed at "
              f"{stats['resumed_from_step']}), {stats['tokens_per_s']} tokens/s", file=sys.stderr)
        print(json.dumps(stats, sort_keys=True))
    return 0


def default_resume_dir(out: Path) -> Path:
    """``<out>.partial``, beside ``out`` (what the workflow passes): where resume checkpoints go."""
    out = Path(out)
    if out.name in ("", ".."):  # "." or "..": name the folder itself
        out = out.resolve()
    return out.with_name(out.name + ".partial")


def check_inputs(args, settings) -> None:
    """What the training processes would reject, checked before launching them (one line, exit 2).

    Raises:
        InputError: a batch that does not divide among the processes, a missing or malformed
            scored file, a policy folder that is not one, overlapping output and side folders.
    """
    from linepo.errors import InputError
    from linepo.stages.models import resolve_policy
    from linepo.stages.training import read_scored

    settings.per_device_batch_size(args.num_processes)
    for path in args.scored:
        if not Path(path).is_file():
            raise InputError(f"--scored {path}: file not found")
    out, side = args.out.resolve(), args.resume_dir.resolve()
    if out == side or side.is_relative_to(out) or out.is_relative_to(side):
        raise InputError(f"--resume-dir {args.resume_dir}: must lie outside --out {args.out} (and not contain it)")
    read_scored(args.scored)
    for path in args.validation:
        if not Path(path).is_file():
            raise InputError(f"--validation {path}: file not found")
    if args.validation:
        read_scored(args.validation, option="--validation")
    resolve_policy(args.policy)


def launch_command(args, settings, *, port: int) -> list[str]:
    """``accelerate launch ... -m linepo.cli train ...`` re-running this command in N processes."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.num_processes),
               "--num_machines", "1", "--main_process_port", str(port), "--dynamo_backend", "no"]
    if args.accelerate_config is not None:
        command += ["--config_file", str(args.accelerate_config)]
    else:
        # DDP through torchrun; on CPU too (the Trainer then joins a gloo group with use_cpu).
        command += ["--multi_gpu", "--mixed_precision", "no"]
    command += ["-m", "linepo.cli", "train", "--policy", str(args.policy), "--scored", *map(str, args.scored),
                *(["--validation", *map(str, args.validation)] if args.validation else []),
                "--out", str(args.out), "--resume-dir", str(args.resume_dir),
                "--config-json", json.dumps(settings.to_dict(), sort_keys=True),
                "--num-processes", str(args.num_processes)]
    return command


def launch(args, settings) -> int:
    """Check the inputs, then train in ``args.num_processes`` processes under ``accelerate launch``."""
    import torch

    from linepo.errors import InputError
    from linepo.stages.parallel import exit_code, first_failure, free_port, run_workers

    check_inputs(args, settings)
    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.device_count() < args.num_processes:
        raise InputError(f"--num-processes {args.num_processes}: one process per GPU, but only "
                         f"{torch.cuda.device_count()} GPU(s) are visible")
    command = launch_command(args, settings, port=free_port())
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.num_processes)))
    print(f"linepo train: launching {args.num_processes} processes ({'GPU' if cuda else 'CPU, gloo'}): "
          + " ".join(command[:command.index("-m", 2)]), file=sys.stderr, flush=True)
    results = run_workers([command], [env], ["launch"], echo_stdout=True)
    failure = first_failure(results)
    if failure is None:
        return 0
    reason = failure.error or f"accelerate launch exited with code {failure.returncode} (see the lines above)"
    print(f"linepo train: error: {reason}", file=sys.stderr)
    return exit_code(failure)
