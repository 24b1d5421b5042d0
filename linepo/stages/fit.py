"""Prompts that fit the model: a prompt longer than the model's positions is dropped, counted.

A 50,000-character prompt on a model with 512 positions would make ``generate`` allocate for a
sequence the model cannot take (tens of GB) and die with a long traceback; both sampling
backends and the data-parallel parent (``linepo sample``) drop such prompts before generating.

    from linepo.stages.fit import fit_prompts, max_positions
    kept = fit_prompts(prompts, tokenizer, max_positions(model.config, tokenizer), max_new_tokens=512)
"""

from __future__ import annotations

import logging

from linepo.errors import InputError

log = logging.getLogger("linepo.stages.sampling")  # the sampler's log, where users look for drops

#: A tokenizer's ``model_max_length`` above this is transformers' "unknown" placeholder (1e30).
_SANE_MAX_LENGTH = 10_000_000


def max_positions(config=None, tokenizer=None) -> int | None:
    """Tokens (prompt + response) the model takes: its config's ``max_position_embeddings``
    (or ``n_positions``, ``max_sequence_length``), else the tokenizer's ``model_max_length``
    when it is a real length; None when neither says."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < _SANE_MAX_LENGTH else None


def fit_prompts(prompts: list[dict], tokenizer, positions: int | None, max_new_tokens: int,
                source: str = "prompts") -> list[dict]:
    """The prompts whose templated tokens plus ``max_new_tokens`` fit in ``positions``, in order.

    A longer prompt is dropped and the drops are counted in the log.

    Raises:
        InputError: ``max_new_tokens`` alone fills the model, or no prompt fits (names ``source``).
    """
    if positions is None or not prompts:
        return prompts
    from linepo.stages.models import encode_prompt

    limit = positions - max_new_tokens
    if limit < 1:
        raise InputError(f"--max-new-tokens {max_new_tokens}: the model takes {positions} positions in all "
                         "(prompt and response); lower it (config key sampling.max_new_tokens)")
    kept = [p for p in prompts if len(encode_prompt(tokenizer, p["prompt"])) <= limit]
    dropped = len(prompts) - len(kept)
    if dropped and not kept:
        raise InputError(f"{source}: all {len(prompts)} prompts are longer than {limit} tokens (model max {positions} "
                         f"- max_new_tokens {max_new_tokens}); use shorter prompts or fewer max_new_tokens")
    if dropped:
        log.warning("dropped %d of %d prompts longer than %d tokens (model max %d - max_new_tokens %d)",
                    dropped, len(prompts), limit, positions, max_new_tokens)
    return kept
