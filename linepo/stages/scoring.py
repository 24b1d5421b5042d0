"""Summed response log-probs log π(y|x): the one implementation that scoring and training share.

    linepo score --preferences results/x/preferences.parquet --reference results/sft/policy \\
        --anchor results/x/policy --out results/x/scored.parquet --batch-size 32 --max-length 512

    from linepo.stages.scoring import sequence_logprobs, score_preferences
    logps = sequence_logprobs(model, tokenizer, prompts, responses, batch_size=32, max_length=512)  # (B,)

A sequence is ``encode_prompt(prompt) + response ids + [stop]``: the response's ids as sampled
(its text, encoded as text, only for hand-made files without them), and stop is the token
the sample emitted (EOS, or the chat template's end of turn: Qwen2's ``<|im_end|>``) and is
absent when the sample was cut; log π(y|x) is the sum of the next-token log-probs at the
response positions (the stop token included), nothing on the prompt.
The trainer computes the policy's log-probs with the same :func:`tokenize_pairs` and
:func:`response_logprobs` (with gradients), so at step 0 the policy's Δπ equals the
scored Δref up to float rounding.

Truncation (the same in scoring and training): a sequence longer than ``max_length`` first
loses the *start* of its prompt, down to half of ``max_length`` when the response needs the
room, then the *end* of its response. Both responses of a pair are truncated independently.

:func:`score_preferences` turns a "preferences" parquet into a "scored" one: it adds
log π_ref(y±|x) and log μ_k(y±|x), computed without gradients, so that training holds only
the policy in memory. When the reference and the anchor are the same folder the model is
loaded and run once.

This module is long because scoring and training must share one tokenisation, truncation and
log-prob rule (and the scorer's deduplication and MNPO's mixed anchor build on it).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from linepo.errors import InputError
from linepo.settings import setting

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ScoringSettings:
    """How log-probs are computed (the workflow config's ``scoring`` section; ``linepo score``'s flags)."""

    batch_size: int = setting(32, "sequences per forward pass", low=1)
    max_length: int = setting(512, "tokens per sequence: longer ones lose their prompt's start, then their "
                                   "response's end", low=8)
    deduplicate: bool = setting(False, "forward each distinct (prompt, response) once and copy its log-probs to "
                                       "every pair it is in (all_pairs: each response is in n-1 pairs)")


#: Columns of a "scored" file that hold log-probs.
LOGP_COLUMNS = ("reference_chosen_logp", "reference_rejected_logp", "anchor_chosen_logp", "anchor_rejected_logp")


# ----------------------------------------------------------------------------- tokenisation


def _truncate(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Fit prompt + response into ``max_length``: drop the prompt's start, then the response's end."""
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids, False
    keep_prompt = min(len(prompt_ids), max(max_length - len(response_ids), max_length // 2))
    prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
    return prompt_ids, response_ids[: max_length - keep_prompt], True


def _response_ids(tokenizer, responses, finished=None, stop_tokens=None, token_ids=None) -> list[list[int]]:
    """Token ids of each response, followed by the stop token it emitted.

    ``stop_tokens[i]`` is the token that ended response i (EOS, or the chat template's end of
    turn such as Qwen2's ``<|im_end|>``), None when it was cut at max_new_tokens: a cut sample
    never emitted one, and scoring one would add a large negative log π(stop | cut text) that
    the losses could move without moving the response. Without ``stop_tokens`` (hand-made
    files), a ``finished`` response (default: all) ends with the tokenizer's EOS.
    ``token_ids[i]``, when given, is response i as sampled (scored as is, not re-tokenized).
    """
    from linepo.stages.text import encode_text

    # The sampled ids when the sample file kept them (scoring re-tokenized text would score
    # another sequence than the one sampled); else the text, as text.
    token_ids = [None] * len(responses) if token_ids is None else list(token_ids)
    encoded = [list(ids) if ids is not None else encode_text(tokenizer, text)
               for text, ids in zip(responses, token_ids, strict=True)]
    finished = [True] * len(encoded) if finished is None else list(finished)
    stop_tokens = [None] * len(encoded) if stop_tokens is None else list(stop_tokens)
    out = []
    for ids, done, stop in zip(encoded, finished, stop_tokens, strict=True):
        if stop is None and done:
            if tokenizer.eos_token_id is None:
                raise InputError("tokenizer: has no eos token, and a finished response names no stop token")
            stop = tokenizer.eos_token_id
        out.append(ids + [int(stop)] if stop is not None and done else ids)
    return out


def tokenize_responses(tokenizer, prompts, responses, *, max_length: int, finished=None,
                       stop_tokens=None, token_ids=None) -> list[dict]:
    """``{"input_ids", "response_mask"}`` per (prompt, response): the sequences log π(y|x) sums over.

    ``response_mask[t]`` is 1 where token t belongs to the response (its stop token included
    where it ``finished``; see :func:`_response_ids`): the positions whose next-token
    log-prob is summed. Prompts go through :func:`linepo.stages.models.encode_prompt` (chat
    template when there is one).
    """
    from linepo.stages.models import encode_prompt

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    cache: dict[str, list[int]] = {}
    features, truncated = [], 0
    for prompt, response_ids in zip(prompts, _response_ids(tokenizer, responses, finished, stop_tokens, token_ids)):
        if prompt not in cache:
            cache[prompt] = encode_prompt(tokenizer, prompt)
        prompt_ids, response_ids, cut = _truncate(cache[prompt], response_ids, max_length)
        truncated += cut
        features.append({"input_ids": prompt_ids + response_ids,
                         "response_mask": [0] * len(prompt_ids) + [1] * len(response_ids)})
    if truncated:
        log.warning("%d of %d sequences truncated to max_length=%d", truncated, len(features), max_length)
    return features


def tokenize_pairs(tokenizer, prompts, chosen, rejected, *, max_length: int, chosen_finished=None,
                   rejected_finished=None, chosen_stop=None, rejected_stop=None, chosen_ids=None,
                   rejected_ids=None) -> list[dict]:
    """Per pair: ``chosen_input_ids``, ``chosen_response_mask``, ``rejected_input_ids``,
    ``rejected_response_mask`` (see :func:`tokenize_responses`); what the trainer's batches hold."""
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"{len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected")
    finished = None
    if chosen_finished is not None or rejected_finished is not None:
        finished = list(chosen_finished or [True] * len(chosen)) + list(rejected_finished or [True] * len(rejected))
    stops = None
    if chosen_stop is not None or rejected_stop is not None:
        stops = list(chosen_stop or [None] * len(chosen)) + list(rejected_stop or [None] * len(rejected))
    ids = None
    if chosen_ids is not None or rejected_ids is not None:
        ids = list(chosen_ids or [None] * len(chosen)) + list(rejected_ids or [None] * len(rejected))
    both = tokenize_responses(tokenizer, list(prompts) * 2, list(chosen) + list(rejected), max_length=max_length,
                              finished=finished, stop_tokens=stops, token_ids=ids)
    n = len(prompts)
    return [
        {"chosen_input_ids": c["input_ids"], "chosen_response_mask": c["response_mask"],
         "rejected_input_ids": r["input_ids"], "rejected_response_mask": r["response_mask"]}
        for c, r in zip(both[:n], both[n:])
    ]


def pad_sequences(sequences: list[list[int]], masks: list[list[int]], pad_token_id: int, padding_side: str = "right"):
    """Pad to one width; returns ``input_ids``, ``attention_mask``, ``response_mask``, each (B, T) long."""
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    response = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    for i, (seq, mask) in enumerate(zip(sequences, masks)):
        span = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        attention[i, span] = 1
        response[i, span] = torch.tensor(mask, dtype=torch.long)
    return ids, attention, response


# ----------------------------------------------------------------------------- log-probs


def response_logprobs(model, input_ids, attention_mask, response_mask):
    """Summed log-probs of the response tokens of each row; shape (B,), float32.

    Works with left or right padding: position ids count real tokens only. The float32
    log-softmax is taken only at response positions, so memory grows with the number of
    response tokens, not with B × T × V. Differentiable (training calls it with grad).

    Args:
        model: a causal LM (plain or wrapped by DDP/FSDP/DeepSpeed).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 on real tokens, 0 on padding.
        response_mask: (B, T) 1 on response tokens (whose log-prob given the prefix is summed).
    """
    import torch

    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits  # (B, T, V)
    mask = response_mask[:, 1:].bool()  # (B, T-1): token t+1 is predicted at position t
    targets = input_ids[:, 1:][mask]  # (N,)
    selected = logits[:, :-1][mask].float()  # (N, V)
    token_logps = selected.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(selected, dim=-1)  # (N,)
    per_token = torch.zeros(mask.shape, dtype=token_logps.dtype, device=token_logps.device)
    per_token = per_token.masked_scatter(mask, token_logps)  # (B, T-1)
    return per_token.sum(-1)  # (B,)


def _device_of(model):
    return next(model.parameters()).device


def sequence_logprobs(model, tokenizer, prompts, responses, *, batch_size: int = 32, max_length: int = 512,
                      stats: dict | None = None, finished=None, stop_tokens=None, token_ids=None):
    """log π(response | prompt) summed over response tokens + its stop token, without gradients;
    (B,) float32 on CPU.

    ``stop_tokens`` names the token each response emitted (None: cut at max_new_tokens, scored
    without one); without it, ``finished`` (default: all) responses end with the tokenizer's EOS.

    Sequences are sorted by length and batched (longest first, so an out-of-memory error
    comes at once); results come back in input order and do not depend on ``batch_size``
    or on the tokenizer's padding side beyond float rounding. ``stats``, when given, gets
    ``tokens`` (non-padding tokens run) added.
    """
    import torch

    if batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {batch_size}")
    features = tokenize_responses(tokenizer, prompts, responses, max_length=max_length, finished=finished,
                                  stop_tokens=stop_tokens, token_ids=token_ids)
    out = torch.zeros(len(features), dtype=torch.float32)
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    device = _device_of(model)
    side = getattr(tokenizer, "padding_side", "right") or "right"
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start: start + batch_size]
                ids, attention, response = pad_sequences(
                    [features[i]["input_ids"] for i in rows], [features[i]["response_mask"] for i in rows],
                    tokenizer.pad_token_id, side)
                logps = response_logprobs(model, ids.to(device), attention.to(device), response.to(device))
                out[torch.tensor(rows)] = logps.float().cpu()
                tokens += int(attention.sum())
    finally:
        model.train(was_training)
    if stats is not None:
        stats["tokens"] = stats.get("tokens", 0) + tokens
    return out


# ----------------------------------------------------------------------------- scoring a preference set


def read_preferences(paths) -> "pyarrow.Table":  # noqa: F821
    """One "preferences" table from one or several files, concatenated in the given order."""
    import pyarrow as pa

    from linepo.schemas import read_table

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise InputError("--preferences: give at least one preferences file")
    tables = [read_table(p, "preferences") for p in paths]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _same_policy(a, b) -> bool:
    a, b = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return str(a) == str(b)


def distinct_responses(prompts, responses, finished, stops, ids) -> tuple[list[int], list[int]]:
    """(the first row of each distinct (prompt, response, finished, stop, ids), each row's distinct index)."""
    first: list[int] = []
    index: list[int] = []
    seen: dict[tuple, int] = {}
    for i, key in enumerate(zip(prompts, responses, finished, stops,
                                [tuple(x) if x is not None else None for x in ids])):
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        index.append(seen[key])
    return first, index


def _score_with(path, prompts, chosen, rejected, finished, stops, ids, *, batch_size, max_length, dtype,
                trust_remote_code, allow_pickle_weights=False, deduplicate=False):
    """(chosen logps, rejected logps, tokens, seconds) under the policy at ``path``; frees it after.

    ``deduplicate``: each distinct (prompt, response) is forwarded once and its log-prob copied
    to every row it is in (equal to the plain values up to float rounding: padding widths differ).
    """
    import torch

    from linepo.stages.models import load_policy

    model, tokenizer = load_policy(path, trust_remote_code=trust_remote_code, dtype=dtype,
                                   allow_pickle_weights=allow_pickle_weights)
    stats: dict = {}
    start = time.perf_counter()
    rows = (list(prompts) * 2, list(chosen) + list(rejected), list(finished), list(stops), list(ids))
    first, index = distinct_responses(*rows) if deduplicate else (None, None)
    if first is not None:
        rows = tuple([column[i] for i in first] for column in rows)
    try:
        logps = sequence_logprobs(model, tokenizer, rows[0], rows[1], batch_size=batch_size, max_length=max_length,
                                  stats=stats, finished=rows[2], stop_tokens=rows[3], token_ids=rows[4])
        if index is not None:
            logps = logps[torch.tensor(index, dtype=torch.long)]
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    seconds = time.perf_counter() - start
    n = len(prompts)
    return logps[:n], logps[n:], stats["tokens"], seconds


def score_preferences(prefs_path, out_path, *, reference, anchor, batch_size: int = 32, max_length: int = 512,
                      dtype: str = "auto", trust_remote_code: bool = False,
                      allow_pickle_weights: bool = False, mixture=(), deduplicate: bool = False) -> dict:
    """Write a "scored" parquet: the preference pairs plus log π_ref(y±|x) and log μ_k(y±|x).

    Args:
        prefs_path: a "preferences" parquet file, or a list of them (concatenated in order).
        out_path: the "scored" parquet to write (atomically).
        reference: folder (or hub id) of π_ref.
        anchor: folder (or hub id) of μ_k, the policy that sampled the pairs; when it is
            the same folder as ``reference`` the log-probs are computed once.
        batch_size, max_length: sequences per forward pass; tokens per sequence (see the
            module doc for truncation).
        dtype: the models' dtype: "auto", "float32", "bfloat16" or "float16".
        mixture: MNPO's anchor, ``[(folder, weight), ...]``: the anchor columns are then
            Σ_j w_j log π_j(y±|x) (the loss is linear in them), ``anchor`` being one of the
            folders; a folder that is the reference is not run twice.
        deduplicate: forward each distinct (prompt, response) once (``ScoringSettings.deduplicate``).

    Returns:
        stats: pairs, tokens, seconds, pairs_per_s, tokens_per_s, models_run.

    Raises:
        InputError: a missing or malformed preferences file, a policy that cannot be
            loaded, a bad batch size or max length, or a non-finite log-prob.
    """
    from linepo.schemas import write_table

    if batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {batch_size}")
    if max_length < 8:
        raise InputError(f"--max-length: must be at least 8, got {max_length}")
    if Path(out_path).suffix != ".parquet":
        raise InputError(f"--out {out_path}: must end in .parquet")
    table = read_preferences(prefs_path)
    prompts = table.column("prompt").to_pylist()
    chosen = table.column("chosen").to_pylist()
    rejected = table.column("rejected").to_pylist()
    finished = table.column("chosen_finished").to_pylist() + table.column("rejected_finished").to_pylist()
    stops = table.column("chosen_stop_token_id").to_pylist() + table.column("rejected_stop_token_id").to_pylist()
    ids = table.column("chosen_token_ids").to_pylist() + table.column("rejected_token_ids").to_pylist()
    kwargs = dict(batch_size=batch_size, max_length=max_length, dtype=dtype, trust_remote_code=trust_remote_code,
                  allow_pickle_weights=allow_pickle_weights, deduplicate=bool(deduplicate))

    ref_c, ref_r, tokens, seconds = _score_with(reference, prompts, chosen, rejected, finished, stops, ids, **kwargs)
    models_run = 1
    if mixture:
        anc_c, anc_r = 0.0 * ref_c.double(), 0.0 * ref_r.double()  # summed in float64
        for folder, weight in mixture:
            if _same_policy(reference, folder):
                one_c, one_r = ref_c, ref_r
            else:
                one_c, one_r, more_tokens, more_seconds = _score_with(folder, prompts, chosen, rejected, finished,
                                                                      stops, ids, **kwargs)
                tokens, seconds, models_run = tokens + more_tokens, seconds + more_seconds, models_run + 1
            anc_c, anc_r = anc_c + float(weight) * one_c.double(), anc_r + float(weight) * one_r.double()
    elif _same_policy(reference, anchor):
        anc_c, anc_r = ref_c, ref_r
    else:
        anc_c, anc_r, more_tokens, more_seconds = _score_with(anchor, prompts, chosen, rejected, finished, stops,
                                                              ids, **kwargs)
        tokens, seconds, models_run = tokens + more_tokens, seconds + more_seconds, 2
    columns = dict(zip(LOGP_COLUMNS, (ref_c, ref_r, anc_c, anc_r)))
    for name, values in columns.items():
        bad = [i for i, v in enumerate(values.tolist()) if not math.isfinite(v)]
        if bad:
            raise InputError(f"{name}: {len(bad)} non-finite log-probs (first at row {bad[0]}); check the policy")

    rows = {name: table.column(name).to_pylist() for name in
            ("prompt_id", "prompt", "chosen", "rejected", "chosen_finished", "rejected_finished",
             "chosen_stop_token_id", "rejected_stop_token_id", "chosen_token_ids", "rejected_token_ids",
             "chosen_win_rate", "rejected_win_rate", "label_probability")}
    rows.update({name: values.double().tolist() for name, values in columns.items()})
    pairs = len(prompts)
    stats = {
        "pairs": pairs,
        "models_run": models_run,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(pairs * models_run / seconds, 2) if seconds > 0 else None,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
    }
    metadata = {"scoring": {"reference": str(reference), "anchor": str(anchor), "max_length": max_length,
                            "dtype": dtype}}
    if mixture:
        metadata["scoring"]["mixture"] = [[str(folder), float(weight)] for folder, weight in mixture]
    prefs = [prefs_path] if isinstance(prefs_path, (str, os.PathLike)) else list(prefs_path)
    anchors = [folder for folder, _ in mixture] if mixture else [anchor]
    inputs = [*prefs, reference] + list(dict.fromkeys(a for a in anchors if str(a) != str(reference)))
    write_table(rows, out_path, "scored", metadata=metadata, inputs=inputs, computed=True)
    log.info("scored %d pairs with %d model(s): %s pairs/s, %s tokens/s", pairs, models_run,
             stats["pairs_per_s"], stats["tokens_per_s"])
    return stats
