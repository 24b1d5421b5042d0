"""Supervised fine-tuning on chats: a base model becomes the SFT policy that runs start from.

    linepo sft --base Qwen/Qwen2-1.5B --data HuggingFaceH4/ultrachat_200k --split train_sft \\
        --out results/sft/mine/model --resume-dir results/sft/mine/model.partial \\
        --epochs 1 --batch-size 32 --learning-rate 2e-5 --warmup-ratio 0.03 --max-length 2048

    from linepo.stages.sft import SFTSettings, train_sft
    train_sft("Qwen/Qwen2-1.5B", "ultrachat.jsonl", "sft/", resume_dir="sft.partial", settings=SFTSettings())

The paper's SFT policy is Qwen2-1.5B fine-tuned on UltraChat (its code: yale-nlp/COMAL
``mle.py``: lr 2e-5, 3% warmup, linear decay, fp32 weights under bf16 autocast, 2048
tokens). Every chat (a ``messages`` list of ``{role, content}``) is rendered with the chat
template, and the loss is the token-mean negative log-likelihood of the *assistant* turns
only — their text and the end-of-turn token the template closes them with, so the policy
learns to stop where a turn ends — nothing on system or user turns.

The loop is ``transformers.Trainer`` (resumable from the side folder ``resume_dir``, like
:mod:`linepo.stages.training`), the weights fp32 whatever the base's dtype, bf16 autocast on GPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from linepo.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class SFTSettings:
    """Settings of one SFT run (names as in linepo.stages.training.TrainSettings)."""

    epochs: float = 1.0  #: passes over the chats
    batch_size: int = 32  #: chats per optimizer step (over all accumulation steps)
    gradient_accumulation_steps: int = 1  #: micro-batches per optimizer step
    learning_rate: float = 2e-5  #: peak learning rate (the paper's code: 2e-5)
    warmup_ratio: float = 0.03  #: share of optimizer steps warming up (the paper's code: 0.03)
    lr_scheduler_type: str = "linear"  #: any transformers scheduler name
    weight_decay: float = 0.0  #: AdamW weight decay
    max_grad_norm: float = 1.0  #: gradient clipping; 0 disables it
    max_length: int = 2048  #: tokens per chat; longer chats are cut at the end
    max_examples: int | None = None  #: use only the first N chats (None: all)
    seed: int = 0  #: data order and model seed
    bf16: str = "auto"  #: bf16 autocast; auto: on a CUDA GPU with bf16 only
    save_steps: int = 500  #: optimizer steps between resume checkpoints in the side folder

    def validate(self) -> "SFTSettings":
        """Raises InputError naming the flag of the first bad value."""
        def bad(name, rule):
            return InputError(f"--{name.replace('_', '-')}: {rule}, got {getattr(self, name)!r}")

        for name in ("epochs", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, "must be a finite number")
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "save_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "must be an integer >= 1")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise bad("epochs" if self.epochs <= 0 else "learning_rate", "must be > 0")
        if not 0 <= self.warmup_ratio <= 1:
            raise bad("warmup_ratio", "must be in [0, 1]")
        if self.batch_size % self.gradient_accumulation_steps:
            raise bad("batch_size", "must be a multiple of --gradient-accumulation-steps")
        if self.max_examples is not None and (not isinstance(self.max_examples, int) or self.max_examples < 1):
            raise bad("max_examples", "must be an integer >= 1")
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise bad("bf16", "must be auto, true or false")
        return self


# ----------------------------------------------------------------------------- data


def load_chats(source: str, *, split: str | None = None, column: str = "messages", name: str | None = None,
               max_examples: int | None = None) -> list[list[dict]]:
    """The chats (lists of ``{role, content}``) in ``column`` of a local file or hub dataset.

    Raises:
        InputError: the data cannot be loaded, the column is missing, or a row is not a chat
            with at least one assistant turn.
    """
    from linepo.stages.prompts import _load_dataset

    ds = _load_dataset(source, split, name, None, False)
    if column not in ds.column_names:
        raise InputError(f"{source}: no column {column!r} (columns: {ds.column_names}); give --messages-column")
    rows = ds[column] if max_examples is None else ds.select(range(min(max_examples, len(ds))))[column]
    chats = []
    for index, chat in enumerate(rows):
        if (not isinstance(chat, list) or not chat
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in chat)):
            raise InputError(f"{source}: row {index}: column {column!r} is not a list of {{role, content}}")
        if not any(m["role"] == "assistant" for m in chat):
            raise InputError(f"{source}: row {index}: no assistant turn to learn from")
        chats.append([{"role": m["role"], "content": m["content"]} for m in chat])
    if not chats:
        raise InputError(f"{source}: no chats")
    return chats


def chat_features(tokenizer, chat: list[dict], max_length: int) -> dict:
    """``{"input_ids", "labels"}`` of one chat: labels are the ids on assistant turns, -100 elsewhere.

    Assistant spans are found by rendering: the text of ``chat[:i]`` plus the generation
    prompt is where turn i starts, the text of ``chat[:i+1]`` (without trailing whitespace)
    where it ends, so the span holds the reply and its end-of-turn token. Character spans map
    to tokens through the fast tokenizer's offsets.

    Raises:
        InputError: no chat template, or a template whose renderings are not prefixes of each
            other (spans cannot be found by rendering).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("tokenizer: has no chat template; an SFT chat needs one (policy.tokenizer)")
    full = tokenizer.apply_chat_template(chat, tokenize=False)
    spans = []
    for i, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        start_text = tokenizer.apply_chat_template(chat[:i], tokenize=False, add_generation_prompt=True) if i else ""
        end_text = tokenizer.apply_chat_template(chat[: i + 1], tokenize=False).rstrip()
        if not (full.startswith(end_text) and end_text.startswith(start_text)):
            raise InputError("tokenizer: its chat template does not render a chat as a prefix of the longer chat; "
                             "cannot find the assistant turns")
        spans.append((len(start_text), len(end_text)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = encoded["input_ids"], []
    for token, (begin, end) in zip(ids, encoded["offset_mapping"]):
        inside = any(lo <= begin and end <= hi and end > begin for lo, hi in spans)
        labels.append(token if inside else -100)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def collate(pad_token_id: int):
    """Right-padded SFT batches (positions stay 0..len-1 for every row), labels -100 on padding."""
    def collate_batch(batch: list[dict]) -> dict:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate_batch


def fit(model, features: list[dict], pad_token_id: int, args, *, resume_from=None):
    """The one SFT loop (the embedded toy's build and :func:`train_sft` both run it): a
    ``transformers.Trainer`` on ``{"input_ids", "labels"}`` features with ``args``
    (``TrainingArguments``), its log lines sent to this module's logger.

    Returns:
        the Trainer's ``TrainOutput`` (global_step, training_loss).
    """
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class LogCallback(TrainerCallback):
        # Trainer prints its log dicts to stdout; send them to the logger instead.
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log.info("sft step %d/%d: loss %.4f", state.global_step, state.max_steps, float(logs["loss"]))

    trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collate(pad_token_id))
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LogCallback())
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    model.eval()
    return result


def use_bf16(setting: str) -> bool:
    """``auto``: bf16 autocast on a CUDA GPU that has it; else what the setting says."""
    import torch

    if str(setting).lower() == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return str(setting).lower() == "true"


# ----------------------------------------------------------------------------- training


def train_sft(base, data, out, *, resume_dir, settings: SFTSettings | None = None, tokenizer=None,
              split: str | None = None, messages_column: str = "messages", name: str | None = None,
              trust_remote_code: bool = False, allow_pickle_weights: bool = False) -> dict:
    """Fine-tune ``base`` on the chats of ``data`` and save the policy (and tokenizer) to ``out``.

    Returns:
        stats: chats, trained tokens, steps, final training loss, seconds, out.

    Raises:
        InputError: bad settings or data, a base or tokenizer that cannot be loaded (a base
            with only pickle weights without ``allow_pickle_weights``), overlapping output and
            side folders; nothing is written.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from linepo.provenance import check_policy_folder
    from linepo.schemas import remove_stale_temporaries
    from linepo.stages.models import (POLICY_OPT_IN, check_weights_format, load_errors, load_failure, resolve_policy,
                                      resolve_tokenizer, save_policy, weight_format_kwargs)
    from linepo.stages.training import _warmup_arguments, latest_checkpoint

    settings = (settings or SFTSettings()).validate()
    out, resume_dir = Path(out), Path(resume_dir)
    if out.resolve() == resume_dir.resolve() or resume_dir.resolve().is_relative_to(out.resolve()):
        raise InputError(f"--resume-dir {resume_dir}: must lie outside --out {out}")
    remove_stale_temporaries(out)  # now, not when saving after training: a killed save's is a whole policy
    source = resolve_policy(base)
    check_weights_format(base, allow_pickle_weights, POLICY_OPT_IN)
    tokenizer_source = resolve_tokenizer(tokenizer) if tokenizer else source
    chats = load_chats(str(data), split=split, column=messages_column, name=name, max_examples=settings.max_examples)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise InputError(f"{tokenizer_source}: cannot load a tokenizer ({err})") from err
    features = [chat_features(tok, chat, settings.max_length) for chat in chats]
    features = [f for f in features if any(label != -100 for label in f["labels"])]  # cut before any reply
    if not features:
        raise InputError(f"{data}: no chat keeps an assistant token within --max-length {settings.max_length}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    try:  # fp32 master weights whatever the base was saved in (see linepo.stages.training.MASTER_DTYPES)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                     **weight_format_kwargs(allow_pickle_weights))
    except load_errors() as err:
        raise load_failure(base, "base model", err, allow_pickle_weights) from err
    check_policy_folder(base)  # a linepo policy folder as the base: its files as written
    use_cache, model.config.use_cache = model.config.use_cache, False  # no KV cache while training
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(resume_dir), num_train_epochs=float(settings.epochs),
        per_device_train_batch_size=settings.batch_size // settings.gradient_accumulation_steps,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, bf16=use_bf16(settings.bf16), seed=settings.seed,
        data_seed=settings.seed, logging_steps=10, save_strategy="steps", save_steps=settings.save_steps,
        save_total_limit=2, report_to="none", disable_tqdm=True, remove_unused_columns=False, use_cpu=not cuda,
        dataloader_pin_memory=cuda, **_warmup_arguments(TrainingArguments, settings.warmup_ratio))
    resume = latest_checkpoint(resume_dir)
    start = time.perf_counter()
    result = fit(model, features, pad, args, resume_from=resume)
    model.config.use_cache = use_cache  # saved as the base had it
    save_policy(model, tok, out, inputs=[base, data])  # local ones are recorded (hub ids are not)
    if resume_dir.is_dir():
        shutil.rmtree(resume_dir)
    stats = {"chats": len(features), "tokens": sum(sum(l != -100 for l in f["labels"]) for f in features),
             "steps": result.global_step, "train_loss": round(float(result.training_loss), 6),
             "resumed_from": str(resume) if resume else None, "seconds": round(time.perf_counter() - start, 1),
             "out": str(out), "settings": dataclasses.asdict(settings)}
    log.info("sft: %d chats, %d steps, loss %.4g -> %s", stats["chats"], stats["steps"], stats["train_loss"], out)
    return stats
