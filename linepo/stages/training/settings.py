"""Settings of one training step (a prox step), their checks, and the processes sharing it.

Names follow the paper (see :mod:`linepo.losses`): ``eta`` is the step size η, so the KL
weight is 1/η (DPO code's β = 1/η) and the IPO/INPO regression target is η/2; ``eta_tau``
is the product ητ ∈ (0, 1] (the paper's LLM runs: η = 500, ητ = 1/3), so τ = eta_tau / eta.
Each field is a :func:`linepo.settings.setting`: ``linepo train``'s flags and the config
schema's training defaults (tested equal) come from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from linepo.algorithms import LOSS_NAMES
from linepo.errors import InputError
from linepo.settings import setting

#: Master-weight dtypes. float32 is the default whatever dtype the policy is stored, sampled or
#: scored in: AdamW at the paper's lr 5e-7 on bf16 weights (8 mantissa bits) rounds most updates
#: away (on a 1536×1536 layer of std 0.02 only ~1% of the weights move in 30 steps). bfloat16 is
#: pure bf16 training, for users who ask for it knowingly.
MASTER_DTYPES = ("float32", "bfloat16")


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


@dataclass
class TrainSettings:
    """Hyper-parameters of one training step (a prox step). Names follow the paper."""

    loss: str = setting("inpo", "the loss (linepo.losses): " + " | ".join(LOSS_NAMES), choices=LOSS_NAMES)
    eta: float = setting(500.0, "step size η > 0: KL weight 1/η (DPO β = 1/η); IPO/INPO target η/2")
    eta_tau: float = setting(1 / 3, "ητ ∈ (0, 1]: INPO's weight on log π_ref; τ = eta_tau / eta")
    epochs: float = setting(3.0, "passes over the pairs")
    batch_size: int = setting(32, "pairs per optimizer step over all processes (the global batch)")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step in each process")
    prompts_per_batch: int | None = setting(None, "each optimizer step trains on all pairs of this many prompts "
                                                  "(seeded order), forwarding each distinct response once; "
                                                  "unset: batch_size pairs per step", low=1)
    learning_rate: float = setting(5e-7, "peak learning rate (the paper's recipe, Tunstall et al. 2023)")
    lr_scheduler_type: str = setting("linear", "any transformers scheduler name")
    warmup_ratio: float = setting(0.0, "share of optimizer steps spent warming up, in [0, 1]")
    weight_decay: float = setting(0.0, "AdamW weight decay (not on biases and norms; the paper's code: 0.01 on all)")
    max_grad_norm: float = setting(1.0, "gradient-norm clipping; 0 disables it (the paper's code does not clip)")
    max_length: int = setting(512, "tokens per sequence (prompt + response), the same rule as scoring")
    seed: int = setting(0, "model-side seed and data order seed (data_seed)")
    bf16: str = setting("auto", "bf16 autocast (mixed precision); auto: only on a CUDA GPU that has bf16",
                        choices=("auto", "true", "false"))
    master_dtype: str = setting("float32", "dtype of the weights AdamW updates and saves (MASTER_DTYPES)",
                                choices=MASTER_DTYPES)
    optim: str = setting("adamw_torch", "TrainingArguments.optim", flag=False)
    eval_steps: int = setting(500, "with validation pairs: optimizer steps between validation-loss evaluations "
                                   "(and at each epoch's end)")
    select_best: bool = setting(True, "with validation pairs: keep the lowest-validation-loss checkpoint, not the last")
    save_steps: int = setting(50, "optimizer steps between resume checkpoints in the side folder")
    save_total_limit: int = setting(2, "resume checkpoints kept", flag=False)
    logging_steps: int = setting(10, "optimizer steps between log lines")
    deepspeed: str | None = setting(None, "path to a DeepSpeed JSON config (TrainingArguments.deepspeed)")
    fsdp: str | None = setting(None, "TrainingArguments.fsdp, e.g. 'full_shard auto_wrap'")
    fsdp_config: dict | None = setting(None, "TrainingArguments.fsdp_config", flag=False)
    activation_checkpointing: bool = setting(False, "recompute activations in backward (less memory)", flag=False)
    full_determinism: bool = setting(False, "torch deterministic algorithms (GPU runs; CPU is already)", flag=False)
    trust_remote_code: bool = setting(False, "run the checkpoint's own modelling code", flag=False)
    allow_pickle_weights: bool = setting(False, "load the parent's pytorch_model.bin when it has no safetensors",
                                         flag=False)

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
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{where}: unknown training setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **values)

    def validate(self) -> "TrainSettings":
        """Check every field; returns self.

        Raises:
            InputError: the first bad value, named as its command-line flag.
        """

        def number(name, value, *, integer=False):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (integer and int(value) != value):
                raise InputError(f"{_flag(name)}: must be {'an integer' if integer else 'a number'}, got {value!r}")

        if self.loss not in LOSS_NAMES:
            raise InputError(f"--loss: unknown loss {self.loss!r}; known: {', '.join(sorted(LOSS_NAMES))}")
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
        self.check_prompts_per_batch()
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

    def check_prompts_per_batch(self, num_processes: int = 1) -> None:
        """``prompts_per_batch``: unset, or an integer >= 1 with one process and no gradient accumulation.

        Raises:
            InputError: one line naming the setting (its flag and its config key).
        """
        value = self.prompts_per_batch
        if value is None:
            return
        where = "--prompts-per-batch (training.prompts_per_batch)"
        if isinstance(value, bool) or not isinstance(value, int):
            if not (isinstance(value, float) and not isinstance(value, bool) and value.is_integer()):
                raise InputError(f"{where}: must be an integer >= 1, got {value!r}")
        if value < 1:
            raise InputError(f"{where}: must be at least 1, got {value!r}")
        if self.gradient_accumulation_steps != 1:
            raise InputError(f"{where}: needs gradient_accumulation_steps 1 (a batch is all pairs of its "
                             f"prompts), got {self.gradient_accumulation_steps}")
        if num_processes > 1:
            raise InputError(f"{where}: trains in one process only, not {num_processes}; unset it to train "
                             "data-parallel")

    def use_bf16(self) -> bool:
        """Resolve ``bf16``: "auto" is true only with a CUDA GPU that supports bf16."""
        value = str(self.bf16).lower()
        if value != "auto":
            return value == "true"
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


