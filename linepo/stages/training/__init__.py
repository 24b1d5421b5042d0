"""One prox step on an LLM: fit the policy to scored preference pairs with an INPO-family loss.

    linepo train --policy results/x/policy --scored results/x/scored.parquet --out results/y/policy \\
        --resume-dir results/y/policy.partial --loss inpo --eta 500 --eta-tau 0.333 --epochs 3 --batch-size 32

    from linepo.stages.training import TrainSettings, train_policy
    stats = train_policy("parent/", ["scored.parquet"], "out/", resume_dir="out.partial",
                         settings=TrainSettings(loss="inpo", eta=500, eta_tau=1/3))

Parameters follow the paper (see :mod:`linepo.losses`): ``eta`` is the step size η, so the
KL weight is 1/η (DPO code's β = 1/η) and the IPO/INPO regression target is η/2;
``eta_tau`` is the product ητ ∈ (0, 1] (the paper's LLM runs: η = 500, ητ = 1/3), so
τ = eta_tau / eta. Only INPO uses τ.

The loop is ``transformers.Trainer``; :class:`PreferenceTrainer` only overrides
``compute_loss``: one forward over the chosen and rejected sequences of a batch
concatenated (2B rows), summed response log-probs (:func:`linepo.stages.scoring.response_logprobs`,
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
#: Master-weight dtypes. float32 is the default whatever dtype the policy is stored, sampled or
#: scored in: AdamW at the paper's lr 5e-7 on bf16 weights (8 mantissa bits) rounds most updates
#: away (on a 1536×1536 layer of std 0.02 only ~1% of the weights move in 30 steps). bfloat16 is
#: pure bf16 training, for users who ask for it knowingly.
MASTER_DTYPES = ("float32", "bfloat16")
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
    weight_decay: float = 0.0  #: AdamW weight decay (not on biases and norms; the paper's code: 0.01 on all)
    max_grad_norm: float = 1.0  #: gradient-norm clipping; 0 disables it (the paper's code does not clip)
    max_length: int = 512  #: tokens per sequence (prompt + response), same rule as scoring
    seed: int = 0  #: model-side seed and data order seed (data_seed)
    bf16: str | bool = "auto"  #: bf16 autocast (mixed precision); "auto" = only on a CUDA GPU that has bf16
    master_dtype: str = "float32"  #: dtype of the weights AdamW updates (and of the saved policy); see MASTER_DTYPES
    optim: str = "adamw_torch"  #: TrainingArguments.optim
    eval_steps: int = 500  #: with validation pairs: optimizer steps between validation-loss evaluations (and at each epoch's end)
    select_best: bool = True  #: with validation pairs: keep the lowest-validation-loss checkpoint, not the last
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
                     "save_total_limit", "logging_steps", "eval_steps"):
            number(name, getattr(self, name), integer=True)
        if not isinstance(self.select_best, bool):
            raise InputError(f"select_best: must be true or false, got {self.select_best!r}")
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
                     "logging_steps", "eval_steps"):
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
        if self.master_dtype not in MASTER_DTYPES:
            raise InputError(f"master_dtype: must be one of {', '.join(MASTER_DTYPES)}, got {self.master_dtype!r}")
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


def read_scored(paths, option: str = "--scored") -> "pyarrow.Table":  # noqa: F821
    """One "scored" table from one or several files (concatenated in order), all values finite.

    Raises:
        InputError: a missing or malformed file, no pairs, or a NaN/inf log-prob or win rate.
    """
    import pyarrow as pa

    from linepo.schemas import read_table

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise InputError(f"{option}: give at least one scored file")
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
        raise InputError(f"{option} {' '.join(map(str, paths))}: no pairs"
                         + (" to train on" if option == "--scored" else " to validate on"))
    return table


def pair_features(tokenizer, table, max_length: int) -> list[dict]:
    """Training examples: token ids and response masks of both responses plus the precomputed values."""
    from linepo.stages.scoring import tokenize_pairs

    features = tokenize_pairs(tokenizer, table.column("prompt").to_pylist(), table.column("chosen").to_pylist(),
                              table.column("rejected").to_pylist(), max_length=max_length,
                              chosen_finished=table.column("chosen_finished").to_pylist(),
                              rejected_finished=table.column("rejected_finished").to_pylist(),
                              chosen_stop=table.column("chosen_stop_token_id").to_pylist(),
                              rejected_stop=table.column("rejected_stop_token_id").to_pylist())
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

        from linepo.stages.scoring import pad_sequences

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
    from linepo.stages.scoring import response_logprobs

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

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            """The validation loss of a batch (the same loss as training, no grad); no logits."""
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, _, _ = pair_loss(model, inputs, self.loss_name, eta=self.eta, tau=self.tau)
            return loss.detach(), None, None

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
        if _checkpoint_step(path) is not None or BestCheckpoints.PATTERN.match(path.name):
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


def fingerprint(policy, scored_paths, settings: TrainSettings, num_processes: int = 1, validation_paths=()) -> dict:
    """What a resume checkpoint must have been trained from: inputs and the settings that matter."""
    policy_dir = Path(str(policy)).expanduser()
    if policy_dir.is_dir():
        files = {p.name: p.stat().st_size for p in sorted(policy_dir.iterdir()) if p.is_file()}
        policy_id = {"path": str(policy_dir.resolve()), "files": files}
    else:
        policy_id = {"hub": str(policy)}
    values = {k: v for k, v in settings.to_dict().items() if k not in _NOT_FINGERPRINTED}
    record = {"policy": policy_id, "scored": [_sha256(Path(p)) for p in scored_paths], "settings": values,
              "num_processes": num_processes}
    if validation_paths:
        record["validation"] = [_sha256(Path(p)) for p in validation_paths]
    return record


# ----------------------------------------------------------------------------- recipe


def _disable_dropout(model) -> None:
    """Dropout off (as in DPO trainers): the policy's log-probs must match the scored ones at step 0."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _warmup_arguments(training_arguments_class, ratio: float) -> dict:
    """The warmup as ``TrainingArguments`` of this transformers version takes it.

    transformers 4 has ``warmup_ratio`` (and an integer ``warmup_steps``); transformers 5
    dropped ``warmup_ratio`` and reads a float ``warmup_steps`` < 1 as that ratio (1.0 would
    mean one step, hence the cap just below 1).
    """
    fields = {f.name for f in dataclasses.fields(training_arguments_class)}
    if "warmup_ratio" in fields:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": min(ratio, 0.999999)}


class PreferenceTraining:
    """setup → train → save → cleanup for one policy update; :meth:`run` does all four.

    Raises (from :meth:`run`):
        InputError: bad settings, missing or malformed inputs, output and side folder
            overlapping; raised before anything is written.
        NonFiniteLossError: the loss became NaN/inf; no output folder is written (the side
            folder keeps its checkpoints).
    """

    def __init__(self, policy, scored, out, *, resume_dir, settings: TrainSettings, callbacks=(), validation=()):
        self.policy = policy
        self.scored = [Path(p) for p in ([scored] if isinstance(scored, (str, os.PathLike)) else scored)]
        self.validation = [Path(p) for p in ([validation] if isinstance(validation, (str, os.PathLike))
                                              else validation)]
        self.selection: BestCheckpoints | None = None
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
        held_out = read_scored(self.validation, option="--validation") if self.validation else None
        self.model, self.tokenizer = self._load_policy()
        features = pair_features(self.tokenizer, table, self.settings.max_length)
        eval_features = pair_features(self.tokenizer, held_out, self.settings.max_length) if held_out else None
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
            eval_dataset=eval_features,
            data_collator=PairCollator(self.tokenizer.pad_token_id),
            loss_name=self.settings.loss,
            eta=float(self.settings.eta),
            tau=float(self.settings.tau),
        )
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        self.trainer.remove_callback(PrinterCallback)
        self.trainer.remove_callback(ProgressCallback)
        self.trainer.add_callback(_log_callback())
        if eval_features is not None:
            self.selection = _best_checkpoints_callback(self)
            self.trainer.add_callback(self.selection)
        for callback in self.callbacks:
            self.trainer.add_callback(callback)
        self.stats.update(pairs=len(features), loss=self.settings.loss, eta=self.settings.eta,
                          eta_tau=self.settings.eta_tau)
        if eval_features is not None:
            self.stats["validation_pairs"] = len(eval_features)

    def _check_paths(self) -> None:
        for path in self.scored:
            if not path.is_file():
                raise InputError(f"--scored {path}: file not found")
        for path in self.validation:
            if not path.is_file():
                raise InputError(f"--validation {path}: file not found")
        out, side = self.out.resolve(), self.resume_dir.resolve()
        if out == side or side.is_relative_to(out) or out.is_relative_to(side):
            raise InputError(f"--resume-dir {self.resume_dir}: must lie outside --out {self.out} (and not contain it)")

    def _load_policy(self):
        from linepo.stages.models import load_policy

        # The parent is upcast to the master dtype whatever dtype it was saved in; bf16 autocast
        # (settings.bf16) then runs the matmuls in bf16 while AdamW updates fp32 weights.
        model, tokenizer = load_policy(self.policy, trust_remote_code=self.settings.trust_remote_code,
                                       dtype=self.settings.master_dtype)
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
            **_warmup_arguments(TrainingArguments, float(s.warmup_ratio)),
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
            # Held-out pairs (checkpoint selection): the validation loss every eval_steps optimizer
            # steps; BestCheckpoints adds each epoch's end and the last step, as the paper's code does.
            eval_strategy="steps" if self.validation else "no",
            eval_steps=int(s.eval_steps) if self.validation else None,
            per_device_eval_batch_size=per_device_batch_size,
            prediction_loss_only=True,
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
            expected = fingerprint(self.policy, self.scored, self.settings, num_processes, self.validation)
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
        """The trained policy to ``out``: the lowest-validation-loss checkpoint when selecting,
        else the last weights; with validation, ``linepo_selection.json`` says which step."""
        trainer = self.trainer
        chosen = self.selection.chosen() if self.selection is not None else None
        if chosen is not None and self.settings.select_best:
            if trainer.args.should_save:
                self._install(chosen.folder)
        else:
            self.save_weights(self.out)
        trainer.accelerator.wait_for_everyone()
        if self.selection is not None:
            summary = self.selection.summary(select_best=self.settings.select_best,
                                             final_step=trainer.state.global_step)
            self.stats["validation"] = summary
            if trainer.args.should_save:
                from linepo.schemas import atomic_path

                with atomic_path(self.out / SELECTION_FILE) as tmp:
                    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
            log.info("validation loss by step %s; kept step %s", summary["history"], summary["selected_step"])
        trainer.accelerator.wait_for_everyone()
        self.stats["out"] = str(self.out)
        return self.out

    def save_weights(self, folder: Path) -> None:
        """The current weights (and tokenizer) as a policy folder, atomically; every process calls it."""
        trainer = self.trainer
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            self._save_sharded(folder)
        elif trainer.args.should_save:
            from linepo.stages.models import save_policy

            model = trainer.accelerator.unwrap_model(trainer.model)
            was_training = model.training
            model.eval()
            save_policy(model, self.tokenizer, folder)
            model.train(was_training)
        trainer.accelerator.wait_for_everyone()

    def _save_sharded(self, folder: Path) -> None:
        """DeepSpeed/FSDP: every process joins ``save_model`` (it gathers the weights), rank 0 renames."""
        trainer = self.trainer
        tmp = folder.with_name(f".{folder.name}.saving")
        if trainer.args.should_save and tmp.exists():
            shutil.rmtree(tmp)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp))
        if trainer.args.should_save:
            self.tokenizer.save_pretrained(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)

    def _install(self, saved: Path) -> None:
        """Copy a saved policy folder onto ``out`` atomically (the side folder is removed later)."""
        import tempfile

        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent))
        try:
            for child in saved.iterdir():
                if child.name != BestCheckpoints.RECORD:
                    shutil.copy2(child, tmp / child.name)
            os.chmod(tmp, 0o777 & ~_umask())
            if self.out.exists():
                shutil.rmtree(self.out)
            os.replace(tmp, self.out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

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


def train_policy(policy, scored, out, *, resume_dir, settings: TrainSettings | None = None, callbacks=(),
                 validation=()) -> dict:
    """Train ``policy`` on ``scored`` pairs and save it to ``out``; see :class:`PreferenceTraining`.

    ``validation``: scored held-out pairs; their loss is evaluated every ``settings.eval_steps``
    optimizer steps and at each epoch's end, and with ``settings.select_best`` the
    lowest-validation-loss checkpoint is what ``out`` gets (paper §5.1).

    Returns:
        stats: pairs, resumed_from_step, global_step, train_loss, seconds, tokens, tokens_per_s, out
        (and ``validation``: history, selected step and loss, when validating).
    """
    return PreferenceTraining(policy, scored, out, resume_dir=resume_dir, settings=settings or TrainSettings(),
                              callbacks=callbacks, validation=validation).run()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


SELECTION_FILE = "linepo_selection.json"


class BestCheckpoints:
    """Keeps the lowest-validation-loss weights of a training run in the side folder.

    Each new best is saved as ``best-<step>/`` (weights and tokenizer, atomically, plus its
    loss in ``eval_loss.json``). Which bests are kept is what a resume needs: a resume from
    ``checkpoint-c`` continues a history whose best so far is the latest best at or before
    step c, so for every ``checkpoint-*`` folder present that best is kept, and the newest;
    others are deleted. On (re)start, bests newer than the resumed step are deleted: the
    resumed run recomputes them, so a killed run ends byte-identical to an uninterrupted one.
    The history of evaluations comes from the Trainer's own log history, which checkpoints
    restore.
    """

    RECORD = "eval_loss.json"
    PATTERN = re.compile(r"^best-(\d+)$")

    def __init__(self, training: "PreferenceTraining"):
        self.training = training
        self.side = training.resume_dir

    # -- the Trainer's events
    def on_train_begin(self, args, state, control, **kwargs):
        if args.should_save:
            for step, folder in self._bests().items():
                if step > state.global_step:
                    shutil.rmtree(folder)
        self.training.trainer.accelerator.wait_for_everyone()
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_evaluate = True  # the paper's code evaluates at every epoch's end
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True  # the last weights are a candidate too
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        history = self.history(state)
        if not history or history[-1][0] != state.global_step:
            return control
        step, loss = history[-1]
        earlier = [value for s, value in history[:-1] if s < step]
        if math.isfinite(loss) and all(loss < value for value in earlier):
            self._save_best(step, loss)
        elif not math.isfinite(loss):
            log.warning("validation loss at step %d is %s: not a candidate", step, loss)
        return control

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            self._prune()
        return control

    # -- helpers
    @staticmethod
    def history(state) -> list[tuple[int, float]]:
        """(step, validation loss) of every evaluation so far, one per step (the last kept)."""
        by_step = {}
        for entry in state.log_history:
            if "eval_loss" in entry:
                by_step[int(entry["step"])] = float(entry["eval_loss"])
        return sorted(by_step.items())

    def _bests(self) -> dict[int, Path]:
        if not self.side.is_dir():
            return {}
        found = {}
        for path in self.side.iterdir():
            match = self.PATTERN.match(path.name)
            if match and (path / self.RECORD).is_file():
                found[int(match.group(1))] = path
        return found

    def _save_best(self, step: int, loss: float) -> None:
        folder = self.side / f"best-{step}"
        self.training.save_weights(folder)
        if self.training.trainer.args.should_save:
            (folder / self.RECORD).write_text(json.dumps({"step": step, "eval_loss": loss}) + "\n")
            self._prune()
        self.training.trainer.accelerator.wait_for_everyone()

    def _prune(self) -> None:
        bests = self._bests()
        if not bests:
            return
        keep = {max(bests)}
        for path in self.side.iterdir():
            c = _checkpoint_step(path)
            if c is not None:
                committed = [b for b in bests if b <= c]
                if committed:
                    keep.add(max(committed))
        for step, folder in bests.items():
            if step not in keep:
                shutil.rmtree(folder)

    def chosen(self):
        """The lowest-validation-loss evaluation of the whole history, as (step, loss, folder)."""
        history = self.history(self.training.trainer.state)
        if not history:
            return None
        step, loss = min(history, key=lambda item: (item[1], item[0]))  # ties: the earliest
        folder = self.side / f"best-{step}"
        if not (folder / self.RECORD).is_file():
            raise RuntimeError(f"{folder}: the best validation checkpoint (step {step}) is missing")
        return _Chosen(step, loss, folder)

    def summary(self, *, select_best: bool, final_step: int) -> dict:
        history = self.history(self.training.trainer.state)
        best = min(history, key=lambda item: (item[1], item[0])) if history else (None, None)
        return {"history": [[s, round(v, 8)] for s, v in history], "best_step": best[0],
                "best_eval_loss": best[1], "final_step": final_step, "select_best": select_best,
                "selected_step": best[0] if select_best and history else final_step}


@dataclass(frozen=True)
class _Chosen:
    step: int
    loss: float
    folder: Path


def _best_checkpoints_callback(training: "PreferenceTraining"):
    """A :class:`BestCheckpoints` that is a ``TrainerCallback`` (transformers imported on use)."""
    from transformers import TrainerCallback

    class BestCheckpointsCallback(BestCheckpoints, TrainerCallback):
        pass

    return BestCheckpointsCallback(training)
