"""One prox step on an LLM, as a recipe with a fixed lifecycle (torchtune style).

    linepo train --policy results/x/policy --scored results/x/scored.parquet --out results/y/policy \\
        --resume-dir results/y/policy.partial --loss inpo --eta 500 --eta-tau 0.333 --epochs 3 --batch-size 32

    from linepo.stages.training import TrainSettings, train_policy
    stats = train_policy("parent/", ["scored.parquet"], "out/", resume_dir="out.partial",
                         settings=TrainSettings(loss="inpo", eta=500, eta_tau=1/3))

:class:`PreferenceTraining`: ``setup`` (settings, data, policy, trainer) → ``train`` →
``save`` (the policy as safetensors, into a temp folder renamed onto ``out``; with
validation pairs the lowest-validation-loss checkpoint) → ``cleanup`` (remove the side
folder, :mod:`.checkpoints`). On CPU the final weights of a killed-and-resumed run are
byte-identical to an uninterrupted run's.

Several processes (``linepo train --num-processes N``, which re-runs itself under
``accelerate launch``; DDP, or DeepSpeed/FSDP through an accelerate config): ``batch_size``
is the *global* batch, and each process takes ``batch_size / (N × gradient_accumulation_steps)``
pairs per forward, every N-th micro-batch of the one seeded order, so a step trains on the
pairs a single process would (tests/test_training_multiprocess.py). Rank 0 alone prepares
the side folder, writes the final policy atomically and removes the side folder.
With ``prompts_per_batch`` (one process) a batch is all pairs of K prompts (:mod:`.groups`).

This module is long because one class holds a training job's whole lifecycle, whose order
is the point (resume check, train, select, save plain or sharded, provenance, cleanup).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from linepo.errors import InputError
from linepo.provenance import write_folder_provenance
from linepo.schemas import remove_stale_temporaries
from linepo.stages.training.checkpoints import (FINGERPRINT_FILE, SELECTION_FILE, BestCheckpoints,
                                                _as_saved, _best_checkpoints_callback, _checkpoint_step,
                                                _clear_side_folder, fingerprint, latest_checkpoint)
from linepo.stages.training.data import PairCollator, pair_features, read_scored
from linepo.stages.training.groups import GroupCollator, prompt_groups
from linepo.stages.training.settings import TrainSettings, world_size
from linepo.stages.training.trainer import _log_callback, _trainer_class

log = logging.getLogger("linepo.stages.training")


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
        self.tokenizer = None  # the parent's tokenizer as it was saved: what the trained policy is saved with
        self.pad_token_id: int | None = None  # what batches are padded with (the EOS when the parent has no pad)
        self.resume_from: Path | None = None
        self.stats: dict = {}

    # -- setup
    def setup(self) -> None:
        self.settings.validate()
        self._check_paths()
        table = read_scored(self.scored)
        held_out = read_scored(self.validation, option="--validation") if self.validation else None
        self.model, tokenizer = self._load_policy()
        features = pair_features(tokenizer, table, self.settings.max_length)
        eval_features = pair_features(tokenizer, held_out, self.settings.max_length) if held_out else None
        args = self._training_arguments()  # sets up torch.distributed under a launcher
        if args.world_size != world_size():
            raise InputError(f"WORLD_SIZE={world_size()} but the Trainer sees {args.world_size} process(es); "
                             "launch with `linepo train --num-processes N` (or `accelerate launch`)")
        self._prepare_side_folder(args.world_size)
        trainer_class = _trainer_class()
        grouped = self.settings.prompts_per_batch is not None  # items are prompts' pair groups (.groups)
        self.trainer = trainer_class(
            model=self.model,
            args=args,
            train_dataset=prompt_groups(features, table.column("prompt").to_pylist()) if grouped else features,
            eval_dataset=eval_features,
            data_collator=(GroupCollator if grouped else PairCollator)(self.pad_token_id),
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
        if grouped:
            self.stats["prompts"] = len(self.trainer.train_dataset)
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
        """``(model, tokenizer)`` as load_policy readies them for batched generation (a pad token,
        the EOS when there is none; left padding; pad and EOS ids in the generation config), to
        tokenise with; batches need only ``self.pad_token_id``. What is saved keeps the parent's
        own tokenizer and generation config (:func:`.checkpoints._as_saved`): no pad token is handed down."""
        from linepo.stages.models import load_policy, resolve_policy

        # The parent is upcast to the master dtype whatever dtype it was saved in; bf16 autocast
        # (settings.bf16) then runs the matmuls in bf16 while AdamW updates fp32 weights.
        model, tokenizer = load_policy(self.policy, trust_remote_code=self.settings.trust_remote_code,
                                       dtype=self.settings.master_dtype,
                                       allow_pickle_weights=self.settings.allow_pickle_weights)
        self.pad_token_id = tokenizer.pad_token_id
        self.tokenizer = _as_saved(resolve_policy(self.policy), model,
                                   trust_remote_code=self.settings.trust_remote_code)
        _disable_dropout(model)
        self.parent_use_cache = getattr(model.config, "use_cache", None)
        if self.parent_use_cache:
            model.config.use_cache = False  # no KV cache while training; saved checkpoints get it back
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
        s.check_prompts_per_batch(world_size())
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
            per_device_train_batch_size=int(s.prompts_per_batch or per_device_batch_size),  # grouped: K prompts
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
            remove_stale_temporaries(self.out)  # now, not when saving hours later: they can be GBs
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
        """The current weights (and tokenizer) as a policy folder, atomically; every process calls it.

        The config is saved as the parent's (``use_cache`` as it was, not training's False).
        """
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        training_use_cache = getattr(model.config, "use_cache", None)
        if training_use_cache is not None and getattr(self, "parent_use_cache", None) is not None:
            model.config.use_cache = self.parent_use_cache
        try:
            if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
                self._save_sharded(folder)
            elif trainer.args.should_save:
                from linepo.stages.models import save_policy

                was_training = model.training
                model.eval()
                save_policy(model, self.tokenizer, folder, inputs=self.inputs())
                model.train(was_training)
        finally:
            if training_use_cache is not None:
                model.config.use_cache = training_use_cache
        trainer.accelerator.wait_for_everyone()

    def inputs(self) -> list:
        """What the policy is made from, for its provenance file: the parent and the scored pairs."""
        return [self.policy, *self.scored, *self.validation]

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
            write_folder_provenance(tmp, self.inputs())
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)

    def _install(self, saved: Path) -> None:
        """Copy a saved policy folder onto ``out`` atomically (the side folder is removed later)."""
        import tempfile

        self.out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)
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


