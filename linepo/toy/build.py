"""The embedded toy world's SFT policy: build it (tokenizer, model, SFT, save) and read its style mix.

    linepo embedded build --out results/embedded/policy --seed 0 --steps 200

Its SFT is :func:`linepo.stages.sft.fit`, the one SFT loop, on whatever device there is.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from linepo.errors import InputError
from linepo.toy.model import init_model, style_token_ids, train_tokenizer
from linepo.toy.world import DEFAULT_STYLE_MIX, STYLES, check_style_mix, corpus, prompts

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- SFT


def sft_features(tokenizer, examples) -> list[dict]:
    """Token ids and labels of SFT examples: loss only on the response and its EOS.

    ``labels`` is -100 on the prompt (chat template included), so the model learns
    p(response | prompt) and not the prompt distribution.
    """
    from linepo.stages.models import encode_prompt

    features = []
    for ex in examples:
        prompt_ids = encode_prompt(tokenizer, ex["prompt"])
        response_ids = tokenizer(ex["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        features.append(
            {"input_ids": prompt_ids + response_ids, "labels": [-100] * len(prompt_ids) + response_ids}
        )
    return features


def sft(model, tokenizer, examples, *, steps: int, seed: int = 0, batch_size: int = 32, learning_rate: float = 5e-3):
    """Supervised fine-tuning of the toy model (:func:`linepo.stages.sft.fit`) on whatever device
    the model is on; bf16 autocast on a GPU that has it. Returns the trained model."""
    import tempfile

    import torch
    from transformers import TrainingArguments

    from linepo.stages.sft import fit, use_bf16

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="linepo-sft-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, steps // 10),
            weight_decay=0.0,
            optim="adamw_torch",
            logging_steps=max(1, steps // 5),
            save_strategy="no",
            report_to="none",
            use_cpu=not cuda,
            bf16=use_bf16("auto"),
            seed=seed,
            data_seed=seed,
            dataloader_pin_memory=False,
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        fit(model, sft_features(tokenizer, examples), tokenizer.pad_token_id, args)
    return model


# ----------------------------------------------------------------------------- evaluation


def first_token_category_probs(model, tokenizer, prompts, batch_size: int = 64) -> np.ndarray:
    """Exact probability of each style at the first response token, per prompt.

    Returns:
        array ``(num_prompts, len(STYLES) + 1)``: columns in :data:`STYLES` order, then the
        mass on any other token ("unmatched"); rows sum to 1.

    Raises:
        InputError: the tokenizer does not make each style word one token.
    """
    from linepo.stages.models import first_token_category_probs as category_probs

    ids = style_token_ids(tokenizer)
    return category_probs(model, tokenizer, prompts, [[ids[s]] for s in STYLES], batch_size)


# ----------------------------------------------------------------------------- build


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run a block with ``threads`` torch intra-op threads (None: leave torch's setting)."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build(
    out,
    *,
    seed: int = 0,
    steps: int = 200,
    style_mix=DEFAULT_STYLE_MIX,
    continuations: str = "fixed",
    num_prompts: int | None = None,
    learning_rate: float = 5e-3,
    batch_size: int = 32,
    threads: int | None = 1,
    **model_overrides,
) -> dict:
    """Build the embedded policy in folder ``out``: tokenizer, initial model, SFT, save.

    ``threads`` is 1 by default: a 1 M-parameter model gains little from more, a fixed
    count keeps the float results the same across machines, and on a busy 2-core box two
    threads stalled each other (measured: 263 s with two vs 57 s with one).

    Returns:
        a summary: parameter count, seconds, and the SFT policy's mean category
        distribution on the eval prompts next to ``style_mix``.

    Raises:
        InputError: bad ``style_mix``, ``steps`` < 1 or ``num_prompts`` out of range.
    """
    from linepo.stages.models import save_policy

    if steps < 1:
        raise InputError(f"--steps: must be at least 1, got {steps}")
    start = time.perf_counter()
    examples = corpus(num_prompts, style_mix, seed, continuations=continuations)
    tokenizer = train_tokenizer([e["prompt"] for e in examples] + [e["response"] for e in examples])
    style_token_ids(tokenizer)  # fail now, not after training, if a style word got split
    with torch_threads(threads):
        model = init_model(tokenizer, seed, **model_overrides)
        num_params = sum(p.numel() for p in model.parameters())
        log.info("embedded policy: %d parameters, %d SFT examples, %d steps", num_params, len(examples), steps)
        model = sft(
            model, tokenizer, examples, steps=steps, seed=seed, learning_rate=learning_rate, batch_size=batch_size
        )
        probs = first_token_category_probs(model, tokenizer, prompts("eval")).mean(axis=0)
    save_policy(model, tokenizer, out)
    return {
        "out": str(out),
        "parameters": num_params,
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "style_mix": dict(zip(STYLES, check_style_mix(style_mix))),
        "continuations": continuations,
        "eval_category_probs": dict(zip((*STYLES, "unmatched"), probs.round(4).tolist())),
    }


