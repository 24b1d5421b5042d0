"""The side folder of a training step: resume checkpoints, their fingerprint, and the
lowest-validation-loss weights (checkpoint selection).

Intermediate Trainer checkpoints (weights, optimizer, scheduler, RNG, data position) go to
the *side* folder ``resume_dir``, outside the declared output, which Snakemake deletes
before a job starts. A rerun after a kill resumes from its newest complete ``checkpoint-*``;
the folder records a fingerprint of the inputs and settings (``linepo_train.json``), and
checkpoints of other inputs or settings are discarded, never resumed from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from linepo.stages.training.settings import TrainSettings

log = logging.getLogger("linepo.stages.training")

FINGERPRINT_FILE = "linepo_train.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Settings that change how often things are written, not what is computed: a rerun with
#: other values still resumes.
_NOT_FINGERPRINTED = ("save_steps", "save_total_limit", "logging_steps", "allow_pickle_weights")


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
    values = {k: v for k, v in settings.to_dict().items() if k not in _NOT_FINGERPRINTED
              and not (k == "prompts_per_batch" and v is None)}  # unset: the fingerprint it always had
    record = {"policy": policy_id, "scored": [_sha256(Path(p)) for p in scored_paths], "settings": values,
              "num_processes": num_processes}
    if validation_paths:
        record["validation"] = [_sha256(Path(p)) for p in validation_paths]
    return record


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

    def __init__(self, training):  # a linepo.stages.training.recipe.PreferenceTraining
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


def _best_checkpoints_callback(training):
    """A :class:`BestCheckpoints` that is a ``TrainerCallback`` (transformers imported on use)."""
    from transformers import TrainerCallback

    class BestCheckpointsCallback(BestCheckpoints, TrainerCallback):
        pass

    return BestCheckpointsCallback(training)


def _as_saved(source, model, *, trust_remote_code: bool = False):
    """``source``'s tokenizer as ``from_pretrained`` gives it; ``model``'s generation config gets
    back the pad and EOS ids ``source`` saved (None where none), undoing load_policy's defaults."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if getattr(model, "generation_config", None) is not None:
        try:
            saved = GenerationConfig.from_pretrained(source)
        except OSError:  # no generation_config.json: from_pretrained derived it from config.json
            saved = GenerationConfig.from_model_config(model.config)
        for key in ("pad_token_id", "eos_token_id"):
            setattr(model.generation_config, key, getattr(saved, key, None))
    return tokenizer
