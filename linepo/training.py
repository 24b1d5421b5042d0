"""One prox step on an LLM: fit the policy to scored preference pairs with an INPO-family loss.

    linepo train --policy results/x/policy --scored results/x/scored.parquet --out results/y/policy \\
        --resume-dir results/y/policy.partial --loss inpo --eta 500 --eta-tau 0.333 --epochs 3 --batch-size 32

    from linepo.training import TrainSettings, train_policy
    stats = train_policy("parent/", ["scored.parquet"], "out/", resume_dir="out.partial",
                         settings=TrainSettings(loss="inpo", eta=500, eta_tau=1/3))

Parameters follow the paper (see :mod:`linepo.losses`): ``eta`` is the step size η, so the
KL weight is 1/η (DPO code's β = 1/η) and the IPO/INPO regression target is η/2;
``eta_tau`` is the product ητ ∈ (0, 1] (the paper's LLM runs: η = 500, ητ = 1/3), so
τ = eta_tau / eta. Only INPO uses τ.

The loop is ``transformers.Trainer``; :class:`PreferenceTrainer` only overrides
``compute_loss``: one forward over the chosen and rejected sequences of a batch
concatenated (2B rows), summed response log-probs (:func:`linepo.scoring.response_logprobs`,
the same code that scored π_ref and μ_k), then ``preference_loss`` from
:mod:`linepo.losses`, averaged over the batch. A non-finite loss stops training at once
(:class:`NonFiniteLossError`) and nothing is written to the output folder.

Lifecycle of :class:`PreferenceTraining` (torchtune style): ``setup`` (settings, data,
policy, trainer) → ``train`` → ``save`` (the policy as safetensors, into a temp folder
renamed onto ``out``) → ``cleanup`` (remove the side folder). Intermediate Trainer
checkpoints (weights, optimizer, scheduler, RNG, data position) go to the *side* folder
``resume_dir``, outside the declared output, which Snakemake deletes before a job starts.
A rerun after a kill resumes from its newest complete ``checkpoint-*``; on CPU the final
weights are byte-identical to an uninterrupted run. The side folder records a
fingerprint of the inputs and settings (``linepo_train.json``); checkpoints of different
inputs or settings are discarded, never resumed from.

Several processes (``linepo train --num-processes N``, which re-runs itself under
``accelerate launch``; DDP, or DeepSpeed/FSDP through an accelerate config): ``batch_size``
is the *global* batch, pairs per optimizer step, and each process takes
``batch_size / (N × gradient_accumulation_steps)`` pairs per forward, every N-th micro-batch
of the one seeded order, so a step trains on the pairs a single process would (the result
agrees to float rounding: tests/test_training_multiprocess.py). Rank 0 alone prepares the
side folder (the others wait, then look), writes the final policy atomically and removes
the side folder; a checkpoint counts as complete only with every rank's RNG state. A
non-finite loss in any process is all-reduced, so every process raises together instead of
the others hanging in the next gradient all-reduce. Token counts are summed over processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from linepo.errors import InputError
from linepo.losses import LOSSES

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "linepo_train.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Settings that change how often things are written, not what is computed: a rerun with
#: other values still resumes.
_NOT_FINGERPRINTED = ("save_steps", "save_total_limit", "logging_steps")


def _flag(name: str) -> str:
    """The command-line flag of a TrainSettings field, for error messages."""
    return "--" + name.replace("_", "-")


def world_size() -> int:
    """Processes training together: ``WORLD_SIZE`` as set by ``accelerate launch`` / torchrun, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: not an integer") from None


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a launch (before torch.distributed is set up)."""
    return os.environ.get("RANK", "0") == "0"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or ±inf: training stops at once and writes no policy."""


@dataclass
class TrainSettings:
    """Hyper-parameters of one training step (a prox step). Names follow the paper."""

    loss: str = "inpo"  #: dpo | ipo | inpo | sppo (see linepo.losses)
    eta: float = 500.0  #: step size η > 0: KL weight 1/η (DPO β = 1/η); IPO/INPO target η/2
    eta_tau: float = 1 / 3  #: ητ ∈ (0, 1]: INPO's weight on log π_ref; τ = eta_tau / eta
    epochs: float = 3.0  #: passes over the pairs
    batch_size: int = 32  #: pairs per optimizer step over all processes (the global batch; see per_device_batch_size)
    gradient_accumulation_steps: int = 1  #: micro-batches per optimizer step in each process
    learning_rate: float = 5e-7  #: peak learning rate (the paper's recipe, Tunstall et al. 2023)
    lr_scheduler_type: str = "linear"  #: any transformers scheduler name
    warmup_ratio: float = 0.0  #: share of optimizer steps spent warming up, in [0, 1]
    weight_decay: float = 0.0  #: AdamW weight decay
    max_grad_norm: float = 1.0  #: gradient clipping; 0 disables it
    max_length: int = 512  #: tokens per sequence (prompt + response), same rule as scoring
    seed: int = 0  #: model-side seed and data order seed (data_seed)
    bf16: str | bool = "auto"  #: bf16 mixed precision; "auto" = only on a CUDA GPU that has bf16
    dtype: str = "float32"  #: dtype the policy is loaded in (master weights)
    optim: str = "adamw_torch"  #: TrainingArguments.optim
    save_steps: int = 50  #: optimizer steps between resume checkpoints in the side folder
    save_total_limit: int = 2  #: resume checkpoints kept
    logging_steps: int = 10  #: optimizer steps between log lines
    deepspeed: str | None = None  #: path to a DeepSpeed JSON config (TrainingArguments.deepspeed)
    fsdp: str | None = None  #: TrainingArguments.fsdp, e.g. "full_shard auto_wrap"
    fsdp_config: dict | None = None  #: TrainingArguments.fsdp_config
    activation_checkpointing: bool = False  #: recompute activations in backward (less memory)
    full_determinism: bool = False  #: torch deterministic algorithms (GPU runs; CPU is already)
    trust_remote_code: bool = False  #: run the checkpoint's own modelling code

    #: config keys that name a field differently (the workflow config's training section)
    ALIASES = {}  # none at present; the config's batch_size is the field itself

    @property
    def tau(self) -> float:
        """τ of the regularised game: eta_tau / eta."""
        return self.eta_tau / self.eta

    @property
    def beta(self) -> float:
        """DPO code's β = 1/η (for readers of DPO code; not used here)."""
        return 1.0 / self.eta

    def per_device_batch_size(self, num_processes: int = 1) -> int:
        """Pairs per forward in each process: batch_size / (num_processes × gradient_accumulation_steps).

        ``batch_size`` is the *global* batch, so a step's data (and, up to float rounding,
        its result) does not depend on how many processes share it.

        Raises:
            InputError: the global batch does not divide evenly.
        """
        share = num_processes * self.gradient_accumulation_steps
        if self.batch_size % share:
            raise InputError(
                f"--batch-size: {self.batch_size} pairs per optimizer step do not divide evenly among "
                f"{num_processes} process(es) x {self.gradient_accumulation_steps} accumulation step(s)")
        return self.batch_size // share

    @classmethod
    def from_dict(cls, values: dict, where: str = "--config-json") -> "TrainSettings":
        """Settings from a dict of field names (or aliases); unknown keys are an error."""
        return cls().updated(values, where)

    def updated(self, values: dict, where: str = "--config-json") -> "TrainSettings":
        known = {f.name for f in dataclasses.fields(self)}
        changes = {}
        for key, value in values.items():
            name = self.ALIASES.get(key, key)
            if name not in known:
                raise InputError(f"{where}: unknown training setting {key!r}; known: {', '.join(sorted(known))}")
            changes[name] = value
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TrainSettings":
        """Check every field; returns self.

        Raises:
            InputError: the first bad value, named as its command-line flag.
        """

        def number(name, value, *, integer=False):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (integer and int(value) != value):
                raise InputError(f"{_flag(name)}: must be {'an integer' if integer else 'a number'}, got {value!r}")

        if self.loss not in LOSSES:
            raise InputError(f"--loss: unknown loss {self.loss!r}; known: {', '.join(sorted(LOSSES))}")
        for name in ("eta", "eta_tau", "epochs", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm"):
            number(name, getattr(self, name))
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "seed", "save_steps",
                     "save_total_limit", "logging_steps"):
            number(name, getattr(self, name), integer=True)
        if self.eta <= 0:
            raise InputError(f"--eta: the step size η must be > 0, got {self.eta}")
        if not 0 < self.eta_tau <= 1:
            raise InputError(f"--eta-tau: ητ must be in (0, 1], got {self.eta_tau}")
        if self.epochs <= 0:
            raise InputError(f"--epochs: must be > 0, got {self.epochs}")
        if self.learning_rate <= 0:
            raise InputError(f"--learning-rate: must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio <= 1:
            raise InputError(f"--warmup-ratio: must be in [0, 1], got {self.warmup_ratio}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise InputError(f"{_flag(name)}: must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "gradient_accumulation_steps", "save_steps", "save_total_limit",
                     "logging_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{_flag(name)}: must be at least 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise InputError(f"--max-length: must be at least 8, got {self.max_length}")
        self.per_device_batch_size(1)  # the accumulation steps must divide the batch
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        schedulers = [t.value for t in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise InputError(f"--lr-scheduler-type: unknown scheduler {self.lr_scheduler_type!r}; "
                             f"known: {', '.join(schedulers)}")
        if self.optim not in [o.value for o in OptimizerNames]:
            raise InputError(f"optim: unknown optimizer {self.optim!r}; see transformers' OptimizerNames")
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise InputError(f"--bf16: must be auto, true or false, got {self.bf16!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InputError(f"dtype: must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise InputError(f"--deepspeed {self.deepspeed}: file not found")
        if self.fsdp_config is not None and not isinstance(self.fsdp_config, (dict, str)):
            raise InputError(f"fsdp_config: must be a dict or a path, got {self.fsdp_config!r}")
        return self

    def use_bf16(self) -> bool:
        """Resolve ``bf16``: "auto" is true only with a CUDA GPU that supports bf16."""
        value = str(self.bf16).lower()
        if value != "auto":
            return value == "true"
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- data

_FLOAT_COLUMNS = ("reference_chosen_logp", "reference_rejected_logp", "anchor_chosen_logp", "anchor_rejected_logp",
                  "chosen_win_rate", "rejected_win_rate", "label_probability")


def read_scored(paths) -> "pyarrow.Table":  # noqa: F821
    """One "scored" table from one or several files (concatenated in order), all values finite.

    Raises:
        InputError: a missing or malformed file, no pairs, or a NaN/inf log-prob or win rate.
    """
    import pyarrow as pa

    from linepo.schemas import read_table

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise InputError("--scored: give at least one scored file")
    tables = []
    for path in paths:
        table = read_table(path, "scored")
        for name in _FLOAT_COLUMNS:
            values = table.column(name).to_pylist()
            bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(v)]
            if bad:
                raise InputError(f"{path}: column {name!r} has {len(bad)} non-finite values (first at row {bad[0]})")
        tables.append(table)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if table.num_rows == 0:
        raise InputError(f"--scored {' '.join(map(str, paths))}: no pairs to train on")
    return table


def pair_features(tokenizer, table, max_length: int) -> list[dict]:
    """Training examples: token ids and response masks of both responses plus the precomputed values."""
    from linepo.scoring import tokenize_pairs

    features = tokenize_pairs(tokenizer, table.column("prompt").to_pylist(), table.column("chosen").to_pylist(),
                              table.column("rejected").to_pylist(), max_length=max_length,
                              chosen_finished=table.column("chosen_finished").to_pylist(),
                              rejected_finished=table.column("rejected_finished").to_pylist())
    columns = {name: table.column(name).to_pylist() for name in _FLOAT_COLUMNS}
    for i, feature in enumerate(features):
        feature.update({name: float(values[i]) for name, values in columns.items()})
    return features


class PairCollator:
    """Batch of B pairs → 2B right-padded rows (chosen first, then rejected) plus (B,) floats."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        from linepo.scoring import pad_sequences

        sequences = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        masks = [f["chosen_response_mask"] for f in features] + [f["rejected_response_mask"] for f in features]
        ids, attention, response = pad_sequences(sequences, masks, self.pad_token_id, "right")  # (2B, T) each
        batch = {"input_ids": ids, "attention_mask": attention, "response_mask": response}
        for name in _FLOAT_COLUMNS:
            batch[name] = torch.tensor([f[name] for f in features], dtype=torch.float32)  # (B,)
        return batch


# ----------------------------------------------------------------------------- trainer


def pair_loss(model, batch: dict, loss_name: str, *, eta: float, tau: float):
    """(mean loss, per-pair losses (B,), policy log-probs (2B,)) of a collated batch; with grad."""
    from linepo.losses import PairLogProbs, preference_loss
    from linepo.scoring import response_logprobs

    logps = response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])  # (2B,)
    n = logps.shape[0] // 2
    pairs = PairLogProbs(
        policy_chosen=logps[:n],
        policy_rejected=logps[n:],
        reference_chosen=batch["reference_chosen_logp"],
        reference_rejected=batch["reference_rejected_logp"],
        anchor_chosen=batch["anchor_chosen_logp"],
        anchor_rejected=batch["anchor_rejected_logp"],
        chosen_win_rate=batch["chosen_win_rate"],
        rejected_win_rate=batch["rejected_win_rate"],
        label_probability=batch["label_probability"],
    )
    losses = preference_loss(loss_name, pairs, eta=eta, tau=tau)  # (B,)
    return losses.mean(), losses, logps


def _trainer_class():
    """:class:`PreferenceTrainer`, defined on first use so importing this module stays light."""
    global PreferenceTrainer
    if "PreferenceTrainer" in globals():
        return PreferenceTrainer
    import torch
    from transformers import Trainer

    class PreferenceTrainer(Trainer):  # noqa: F811 - defined once, lazily
        """``Trainer`` whose loss is a preference loss on summed response log-probs."""

        loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

        def __init__(self, *args, loss_name: str, eta: float, tau: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_name, self.eta, self.tau = loss_name, eta, tau
            self._tokens = 0  # non-padding tokens trained on in this process (a device tensor: no sync)
            self._metric_sums: dict[str, torch.Tensor] = {}
            self._metric_count = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, _, logps = pair_loss(model, inputs, self.loss_name, eta=self.eta, tau=self.tau)
            if not self._finite_everywhere(loss.detach()):
                raise NonFiniteLossError(
                    f"{self.loss_name} loss is {float(loss.detach())} at optimizer step {self.state.global_step + 1} "
                    f"(eta={self.eta}); training stopped, no policy written")
            if model.training:
                self._tokens = self._tokens + inputs["attention_mask"].sum()
                self._track(inputs, logps.detach(), loss.detach())
            return (loss, {"logps": logps}) if return_outputs else loss

        def _finite_everywhere(self, loss) -> bool:
            """Whether the loss is finite in *every* process: all of them stop together, none hangs
            in the next gradient all-reduce waiting for a process that raised."""
            finite = torch.isfinite(loss).to(torch.float32).reshape(1)
            if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            return bool(finite.item())

        @property
        def tokens_seen(self) -> int:
            """Non-padding tokens trained on, summed over all processes (a collective call)."""
            tokens = torch.as_tensor(self._tokens, device=self.args.device).reshape(1)
            if self.args.world_size > 1:
                tokens = self.accelerator.reduce(tokens, reduction="sum")
            return int(tokens.item())

        def _track(self, inputs, logps, loss):
            n = logps.shape[0] // 2
            margin = (logps[:n] - logps[n:]) - (inputs["reference_chosen_logp"] - inputs["reference_rejected_logp"])
            values = {"margin": margin.mean(), "accuracy": (margin > 0).float().mean()}
            for key, value in values.items():
                self._metric_sums[key] = self._metric_sums.get(key, 0) + value
            self._metric_count += 1

        def log(self, logs, start_time=None):
            if self._metric_count and "loss" in logs:
                for key, total in self._metric_sums.items():
                    logs[key] = round(float(total) / self._metric_count, 4)
                self._metric_sums, self._metric_count = {}, 0
            super().log(logs, start_time)

    return PreferenceTrainer


def _log_callback():
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        """Trainer's log dicts as one log line each (instead of printing them to stdout)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                extra = " ".join(f"{k} {logs[k]:.4g}" for k in ("margin", "accuracy", "learning_rate", "grad_norm")
                                 if isinstance(logs.get(k), (int, float)))
                log.info("train step %d/%d: loss %.4g %s", state.global_step, state.max_steps, logs["loss"], extra)

    return LogCallback()


# ----------------------------------------------------------------------------- side folder


def _checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def _is_complete(checkpoint: Path, num_processes: int = 1) -> bool:
    """True when the Trainer finished writing ``checkpoint``: trainer_state.json (rank 0 writes it
    last) is whole and, with several processes, every rank's RNG state (written by each rank
    before that, but not synchronised with it) is there."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if num_processes > 1 and not all((checkpoint / f"rng_state_{rank}.pth").is_file()
                                     for rank in range(num_processes)):
        return False
    return state.get("global_step") == _checkpoint_step(checkpoint)


def latest_checkpoint(resume_dir, num_processes: int = 1, *, delete_incomplete: bool = True) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``resume_dir``; newer incomplete ones are deleted
    (unless ``delete_incomplete`` is false: processes other than rank 0 only look)."""
    resume_dir = Path(resume_dir)
    if not resume_dir.is_dir():
        return None
    found = sorted((p for p in resume_dir.iterdir() if _checkpoint_step(p) is not None), key=_checkpoint_step,
                   reverse=True)
    for checkpoint in found:
        if _is_complete(checkpoint, num_processes):
            return checkpoint
        if delete_incomplete:
            log.warning("removing incomplete checkpoint %s (killed while saving)", checkpoint)
            shutil.rmtree(checkpoint)
    return None


def _clear_side_folder(resume_dir: Path) -> None:
    """Delete what training wrote in the side folder, then the folder if it is empty."""
    if not resume_dir.is_dir():
        return
    for path in resume_dir.iterdir():
        if _checkpoint_step(path) is not None:
            shutil.rmtree(path)
    (resume_dir / FINGERPRINT_FILE).unlink(missing_ok=True)
    try:
        resume_dir.rmdir()
    except OSError:
        log.warning("side folder %s kept: it holds files linepo did not write", resume_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(policy, scored_paths, settings: TrainSettings, num_processes: int = 1) -> dict:
    """What a resume checkpoint must have been trained from: inputs and the settings that matter."""
    policy_dir = Path(str(policy)).expanduser()
    if policy_dir.is_dir():
        files = {p.name: p.stat().st_size for p in sorted(policy_dir.iterdir()) if p.is_file()}
        policy_id = {"path": str(policy_dir.resolve()), "files": files}
    else:
        policy_id = {"hub": str(policy)}
    values = {k: v for k, v in settings.to_dict().items() if k not in _NOT_FINGERPRINTED}
    return {"policy": policy_id, "scored": [_sha256(Path(p)) for p in scored_paths], "settings": values,
            "num_processes": num_processes}


# ----------------------------------------------------------------------------- recipe


def _disable_dropout(model) -> None:
    """Dropout off (as in DPO trainers): the policy's log-probs must match the scored ones at step 0."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


class PreferenceTraining:
    """setup → train → save → cleanup for one policy update; :meth:`run` does all four.

    Raises (from :meth:`run`):
        InputError: bad settings, missing or malformed inputs, output and side folder
            overlapping; raised before anything is written.
        NonFiniteLossError: the loss became NaN/inf; no output folder is written (the side
            folder keeps its checkpoints).
    """

    def __init__(self, policy, scored, out, *, resume_dir, settings: TrainSettings, callbacks=()):
        self.policy = policy
        self.scored = [Path(p) for p in ([scored] if isinstance(scored, (str, os.PathLike)) else scored)]
        self.out = Path(out)
        self.resume_dir = Path(resume_dir)
        self.settings = settings
        self.callbacks = list(callbacks)
        self.trainer = None
        self.tokenizer = None
        self.resume_from: Path | None = None
        self.stats: dict = {}

    # -- setup
    def setup(self) -> None:
        self.settings.validate()
        self._check_paths()
        table = read_scored(self.scored)
        self.model, self.tokenizer = self._load_policy()
        features = pair_features(self.tokenizer, table, self.settings.max_length)
        args = self._training_arguments()  # sets up torch.distributed under a launcher
        if args.world_size != world_size():
            raise InputError(f"WORLD_SIZE={world_size()} but the Trainer sees {args.world_size} process(es); "
                             "launch with `linepo train --num-processes N` (or `accelerate launch`)")
        self._prepare_side_folder(args.world_size)
        trainer_class = _trainer_class()
        self.trainer = trainer_class(
            model=self.model,
            args=args,
            train_dataset=features,
            data_collator=PairCollator(self.tokenizer.pad_token_id),
            loss_name=self.settings.loss,
            eta=float(self.settings.eta),
            tau=float(self.settings.tau),
        )
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        self.trainer.remove_callback(PrinterCallback)
        self.trainer.remove_callback(ProgressCallback)
        self.trainer.add_callback(_log_callback())
        for callback in self.callbacks:
            self.trainer.add_callback(callback)
        self.stats.update(pairs=len(features), loss=self.settings.loss, eta=self.settings.eta,
                          eta_tau=self.settings.eta_tau)

    def _check_paths(self) -> None:
        for path in self.scored:
            if not path.is_file():
                raise InputError(f"--scored {path}: file not found")
        out, side = self.out.resolve(), self.resume_dir.resolve()
        if out == side or side.is_relative_to(out) or out.is_relative_to(side):
            raise InputError(f"--resume-dir {self.resume_dir}: must lie outside --out {self.out} (and not contain it)")

    def _load_policy(self):
        from linepo.models import load_policy

        model, tokenizer = load_policy(self.policy, trust_remote_code=self.settings.trust_remote_code,
                                       dtype=self.settings.dtype)
        _disable_dropout(model)
        if getattr(model.config, "use_cache", None):
            model.config.use_cache = False
        return model, tokenizer

    def _training_arguments(self):
        from transformers import TrainingArguments

        s = self.settings
        optional = {}
        if s.deepspeed:
            optional["deepspeed"] = s.deepspeed
        if s.fsdp:
            optional["fsdp"] = s.fsdp
        if s.fsdp_config:
            optional["fsdp_config"] = s.fsdp_config
        if s.activation_checkpointing:
            optional["activation_checkpointing"] = True
        import torch

        # Each process takes every N-th micro-batch of the one seeded order, so an optimizer step
        # trains on the pairs one process would. A short last global batch is padded by accelerate
        # (even_batches) with pairs from the epoch's start: unequal batches would leave a
        # process waiting in the gradient all-reduce.
        per_device = s.per_device_batch_size(world_size())  # before TrainingArguments: a bad batch writes nothing
        try:
            return self._make_arguments(TrainingArguments, optional, torch.cuda.is_available(), per_device)
        except ValueError as err:  # e.g. an unknown lr_scheduler_type or optim
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"training settings: {first_line}") from err

    def _make_arguments(self, TrainingArguments, optional: dict, cuda: bool, per_device_batch_size: int):
        s = self.settings
        return TrainingArguments(
            output_dir=str(self.resume_dir),
            num_train_epochs=float(s.epochs),
            # per process; the global batch (pairs per optimizer step) is this × processes ×
            # accumulation steps = s.batch_size
            per_device_train_batch_size=per_device_batch_size,
            gradient_accumulation_steps=int(s.gradient_accumulation_steps),
            learning_rate=float(s.learning_rate),
            lr_scheduler_type=s.lr_scheduler_type,
            # transformers v5: warmup_steps < 1 is a ratio of the optimizer steps (1.0 would mean one step)
            warmup_steps=min(float(s.warmup_ratio), 0.999999),
            weight_decay=float(s.weight_decay),
            max_grad_norm=float(s.max_grad_norm),
            optim=s.optim,
            bf16=s.use_bf16(),
            seed=int(s.seed),
            data_seed=int(s.seed),
            full_determinism=bool(s.full_determinism),
            logging_strategy="steps",
            logging_steps=int(s.logging_steps),
            logging_nan_inf_filter=False,
            save_strategy="steps",
            save_steps=int(s.save_steps),
            save_total_limit=int(s.save_total_limit),
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_pin_memory=cuda,
            use_cpu=not cuda,  # several CPU processes then form a gloo group (accelerate's MULTI_CPU)
            ddp_find_unused_parameters=False,  # every parameter gets a gradient: no extra graph traversal
            **optional,
        )

    def _prepare_side_folder(self, num_processes: int) -> None:
        """Find the checkpoint to resume from, or clear checkpoints that belong to other inputs.

        Only the main process changes the folder; the others wait for it, then look.
        """
        from accelerate import PartialState

        state = PartialState()  # already set up by TrainingArguments
        if state.is_main_process:
            expected = fingerprint(self.policy, self.scored, self.settings, num_processes)
            record = self.resume_dir / FINGERPRINT_FILE
            if self.resume_dir.is_dir():
                try:
                    found = json.loads(record.read_text())
                except (OSError, ValueError):
                    found = None
                if found != expected:
                    if any(_checkpoint_step(p) is not None for p in self.resume_dir.iterdir()):
                        log.warning("%s: checkpoints from other inputs or settings; starting afresh", self.resume_dir)
                    _clear_side_folder(self.resume_dir)
            self.resume_from = latest_checkpoint(self.resume_dir, num_processes)
            self.resume_dir.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(expected, indent=1, sort_keys=True))
        state.wait_for_everyone()
        if not state.is_main_process:
            self.resume_from = latest_checkpoint(self.resume_dir, num_processes, delete_incomplete=False)

    # -- train
    def train(self) -> dict:
        start_step = 0
        if self.resume_from is not None:
            start_step = json.loads((self.resume_from / "trainer_state.json").read_text())["global_step"]
            log.info("resuming from %s (global step %d)", self.resume_from, start_step)
        start = time.perf_counter()
        result = self.trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
        seconds = time.perf_counter() - start
        tokens = self.trainer.tokens_seen
        self.stats.update(
            resumed_from_step=start_step,
            global_step=result.global_step,
            train_loss=round(float(result.training_loss), 6),
            seconds=round(seconds, 3),
            tokens=tokens,
            tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else None,
        )
        log.info("trained %d steps (from step %d) in %.1f s: %s tokens/s, mean loss %.4g", result.global_step,
                 start_step, seconds, self.stats["tokens_per_s"], result.training_loss)
        return self.stats

    # -- save
    def save(self) -> Path:
        trainer = self.trainer
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            self._save_sharded()
        elif trainer.args.should_save:
            from linepo.models import save_policy

            model = trainer.accelerator.unwrap_model(trainer.model)
            model.eval()
            save_policy(model, self.tokenizer, self.out)
        trainer.accelerator.wait_for_everyone()
        self.stats["out"] = str(self.out)
        return self.out

    def _save_sharded(self) -> None:
        """DeepSpeed/FSDP: every process joins ``save_model`` (it gathers the weights), rank 0 renames."""
        trainer = self.trainer
        tmp = self.out.with_name(f".{self.out.name}.saving")
        if trainer.args.should_save and tmp.exists():
            shutil.rmtree(tmp)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp))
        if trainer.args.should_save:
            self.tokenizer.save_pretrained(tmp)
            if self.out.exists():
                shutil.rmtree(self.out)
            os.replace(tmp, self.out)

    # -- cleanup
    def cleanup(self) -> None:
        """Remove the side folder (only after a successful save) and free the trainer."""
        if self.trainer is not None and self.trainer.args.should_save:
            _clear_side_folder(self.resume_dir)
        self.trainer = None

    def run(self) -> dict:
        self.setup()
        self.train()
        self.save()
        self.cleanup()
        return self.stats


def train_policy(policy, scored, out, *, resume_dir, settings: TrainSettings | None = None, callbacks=()) -> dict:
    """Train ``policy`` on ``scored`` pairs and save it to ``out``; see :class:`PreferenceTraining`.

    Returns:
        stats: pairs, resumed_from_step, global_step, train_loss, seconds, tokens, tokens_per_s, out.
    """
    return PreferenceTraining(policy, scored, out, resume_dir=resume_dir, settings=settings or TrainSettings(),
                              callbacks=callbacks).run()
