"""The embedded toy world: a tiny chat model trained here, so nothing is ever downloaded.

- :mod:`.world` — prompts, the three answer styles (the default oracle's categories) and the SFT corpus (numpy only),
- :mod:`.model` — its byte-level BPE tokenizer and tiny Qwen2 model,
- :mod:`.build` — the SFT build (any device) and the exact style mix of a policy.

Everything a caller needs is importable from here: ``from linepo import toy``.
"""

from linepo.toy.build import build, first_token_category_probs, sft, sft_features, torch_threads
from linepo.toy.model import (ASSISTANT, CHAT_TEMPLATE, END, MODEL_SIZE, PAD, TINY_SIZE, USER, VOCAB_SIZE,
                              build_random, init_model, model_config, style_token_ids, train_tokenizer)
from linepo.toy.world import (CONTINUATIONS, DEFAULT_STYLE_MIX, EVAL_FRACTION, SOURCE_LABEL, STYLE_FIRST_WORDS,
                              STYLES, TEMPLATES, TOPICS, all_prompts, check_style_mix, corpus, prompt_rows,
                              prompts, response, style_of)

__all__ = [
    "ASSISTANT", "CHAT_TEMPLATE", "CONTINUATIONS", "DEFAULT_STYLE_MIX", "END", "EVAL_FRACTION", "MODEL_SIZE", "PAD",
    "SOURCE_LABEL", "STYLES", "STYLE_FIRST_WORDS", "TEMPLATES", "TINY_SIZE", "TOPICS", "USER", "VOCAB_SIZE",
    "all_prompts", "build", "build_random", "check_style_mix", "corpus", "first_token_category_probs", "init_model",
    "model_config", "prompt_rows", "prompts", "response", "sft", "sft_features", "style_of", "style_token_ids",
    "torch_threads", "train_tokenizer",
]
