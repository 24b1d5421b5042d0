"""The embedded toy world's tokenizer and tiny Qwen2 model, built here (nothing is downloaded).

The tokenizer is a byte-level BPE trained on the toy corpus with the style words as single
tokens after the assistant marker; the model a small ``Qwen2ForCausalLM``.
"""

from __future__ import annotations

import itertools

from linepo.errors import InputError
from linepo.toy.world import STYLE_FIRST_WORDS, corpus

# Special tokens and the chat template of the embedded tokenizer. The assistant marker is
# directly followed by the response (no newline), so the response's first word is
# pre-tokenized on its own and BPE learns it as one token.
# PAD is Qwen2's "<|endoftext|>": AutoTokenizer loads a qwen2 checkpoint's tokenizer as
# Qwen2Tokenizer, which would otherwise append that token beyond the model's vocabulary.
PAD, USER, ASSISTANT, END = "<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + END + ""
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


# ----------------------------------------------------------------------------- tokenizer

VOCAB_SIZE = 768
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on ``texts``, with the embedded chat template.

    Byte-level BPE (as in GPT-2/Qwen2) decodes every token sequence back to exact text.
    The style words are added to the training texts many times, so BPE merges each into a
    single token whatever the corpus; :func:`style_token_ids` checks it.

    Returns:
        a ``PreTrainedTokenizerFast`` with pad/eos set, left padding and ``CHAT_TEMPLATE``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # The exact pipeline of transformers' Qwen2Tokenizer, which AutoTokenizer rebuilds from
    # our vocab and merges when it loads a qwen2 checkpoint: same tokens either way.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, USER, ASSISTANT, END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each style word alone on a line, as it stands after the assistant marker (no leading
    # space), many times: BPE then merges each into one token whatever the corpus.
    style_lines = list(STYLE_FIRST_WORDS.values()) * 1000
    tok.train_from_iterator(itertools.chain(texts, style_lines), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=END,
        additional_special_tokens=[USER, ASSISTANT],
        padding_side="left",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def style_token_ids(tokenizer, prompt: str = "Explain gravity.") -> dict[str, int]:
    """Token id of each style's first word as the first response token, ``{style: id}``.

    Works for any tokenizer: a word counts as one token when appending it to the
    formatted prompt adds exactly one token and leaves the prompt's tokens unchanged.

    Raises:
        InputError: some style word is not a single token after the assistant marker
            (the policy is not an embedded one).
    """
    from linepo.stages.models import first_response_token_ids

    ids = {}
    for style, word in STYLE_FIRST_WORDS.items():
        found = first_response_token_ids(tokenizer, [word], prompt)
        if found is None:
            raise InputError(f"tokenizer: style word {word!r} is not a single token after the assistant marker")
        ids[style] = found[word]
    return ids


# ----------------------------------------------------------------------------- model

#: 1.08 M parameters with the 768-token tokenizer: enough to copy the topic into the
#: answer, small enough for a CPU SFT of about a minute.
MODEL_SIZE = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512
)


def model_config(tokenizer, **overrides):
    """A small ``Qwen2Config`` for ``tokenizer`` (overrides replace :data:`MODEL_SIZE` keys)."""
    from transformers import Qwen2Config

    size = {**MODEL_SIZE, **overrides}
    return Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **size,
    )


def init_model(tokenizer, seed: int = 0, **overrides):
    """A randomly initialised ``Qwen2ForCausalLM`` (float32) for ``tokenizer``."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(model_config(tokenizer, **overrides))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


#: a model small enough for unit tests (22 k parameters with the 400-token tokenizer)
TINY_SIZE = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
)


def build_random(out, *, seed: int = 0, num_prompts: int = 50, vocab_size: int = 400, **model_overrides):
    """An untrained policy (embedded tokenizer, tiny random Qwen2) saved to ``out``, in ~1 s.

    For tests of anything that needs a real policy folder (sampling, judging, training)
    without the cost of :func:`build`. Returns ``(model, tokenizer)`` as saved.
    """
    from linepo.stages.models import save_policy

    examples = corpus(num_prompts, seed=seed, responses_per_prompt=1)
    tokenizer = train_tokenizer([e["prompt"] for e in examples] + [e["response"] for e in examples], vocab_size)
    model = init_model(tokenizer, seed, **{**TINY_SIZE, **model_overrides})
    model.eval()
    save_policy(model, tokenizer, out)
    return model, tokenizer
