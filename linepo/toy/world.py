"""The embedded default policy: a tiny chat model trained here, so nothing is ever downloaded.

    linepo embedded build --out results/embedded/policy --seed 0 --steps 200
    linepo embedded prompts --out results/embedded/prompts_train.parquet --split train --num 400

It is the LLM-shaped twin of the paper's 3×3 game (§4): every response has one of three
STYLES, and the style is the category that the synthetic intransitive judge compares.

- ``brief`` responses start with "Briefly," and are short,
- ``plain`` responses start with "Sure," and are medium,
- ``detailed`` responses start with "Certainly," and are long.

The first word decides the category, and the tokenizer makes each first word a single
token right after the assistant marker, so the category of a sampled response is decided
by the first response token, and :func:`first_token_category_probs` reads the policy's
exact distribution over categories off one forward pass. The SFT data draws each
response's style from ``style_mix`` (default the paper's start point [0.2, 0.5, 0.3], far
from the game's Nash policy [4/11, 3/11, 4/11]), so the SFT policy starts there too.
Lengths differ by style so that average output length is a meaningful statistic.

By default (``continuations="fixed"``) each (prompt, style) has one answer text, so a
response *is* its style for the policy's purposes and the LLM realises the 3×3 game.
With ``"varied"`` each style has many continuations (random phrasings): a sequence-level
loss can then lower one sampled text's probability through its continuation tokens
without moving mass out of its style, and finite-sample steps under-correct the
styles with the most varied continuations (README, "Choosing the default").

Everything is deterministic given the seed: the prompts, the corpus, the tokenizer, the
initial weights and the SFT data order.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import math
import time

import numpy as np

from linepo.errors import InputError
from linepo.stages.judges.synthetic import DEFAULT_CATEGORIES, DEFAULT_FIRST_WORDS

log = logging.getLogger(__name__)

#: The ``source`` the embedded prompts record in every prompts file ("linepo.embedded:train"):
#: data, kept when the module moved, so that files and node ids stay the same.
SOURCE_LABEL = "linepo.embedded"

#: The three styles are the default synthetic oracle's categories, and their first words
#: its first words: the toy world is built to be judged by the paper's game (numpy-only import).
STYLES = DEFAULT_CATEGORIES
STYLE_FIRST_WORDS = {style: word for word, style in DEFAULT_FIRST_WORDS.items()}
DEFAULT_STYLE_MIX = (0.2, 0.5, 0.3)  # the paper's start point PAPER_INIT

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

# ----------------------------------------------------------------------------- prompts

TEMPLATES = (
    "Explain {topic}.",
    "What is {topic}?",
    "How does {topic} work?",
    "Tell me about {topic}.",
    "Describe {topic} to a beginner.",
    "Why does {topic} matter?",
    "Give me an overview of {topic}.",
    "What should I know about {topic}?",
    "Can you teach me about {topic}?",
    "Summarize the main ideas of {topic}.",
    "Help me understand {topic}.",
    "What are the basics of {topic}?",
    "Write a short note on {topic}.",
    "I am curious about {topic}. What is it?",
    "Could you introduce {topic}?",
    "What is interesting about {topic}?",
    "How would you describe {topic}?",
    "Give me a simple explanation of {topic}.",
    "What do experts say about {topic}?",
    "Teach a student about {topic}.",
)

#: (topic, field): the field fills the response sentences.
TOPICS = (
    ("photosynthesis", "biology"), ("the water cycle", "earth science"), ("compound interest", "finance"),
    ("gravity", "physics"), ("the immune system", "medicine"), ("volcanoes", "geology"),
    ("machine learning", "computing"), ("the printing press", "history"), ("recycling", "ecology"),
    ("black holes", "astronomy"), ("supply and demand", "economics"), ("the human heart", "medicine"),
    ("electric circuits", "engineering"), ("plate tectonics", "geology"), ("vaccines", "medicine"),
    ("prime numbers", "mathematics"), ("the moon", "astronomy"), ("climate change", "earth science"),
    ("democracy", "politics"), ("sleep", "health"), ("bread baking", "cooking"),
    ("solar power", "engineering"), ("bees", "biology"), ("the internet", "computing"),
    ("inflation", "economics"), ("rainbows", "physics"), ("fractions", "mathematics"),
    ("coral reefs", "ecology"), ("the roman empire", "history"), ("exercise", "health"),
)

#: held-out share of the (template, topic) grid; the split is fixed (not seeded) so that
#: every run of the workflow sees the same train and eval prompts.
EVAL_FRACTION = 1 / 6
_SPLIT_SEED = 20240601


@functools.lru_cache(maxsize=1)
def _split_grid() -> dict[str, tuple[tuple[str, str, str], ...]]:
    """``{"train": ((prompt, topic, field), ...), "eval": (...)}``: the fixed split of the grid."""
    grid = [(t.format(topic=topic), topic, field) for t, (topic, field) in itertools.product(TEMPLATES, TOPICS)]
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(grid))
    num_eval = round(len(grid) * EVAL_FRACTION)
    return {
        "eval": tuple(grid[i] for i in order[:num_eval]),
        "train": tuple(grid[i] for i in order[num_eval:]),
    }


def all_prompts() -> dict[str, list[str]]:
    """Every embedded prompt, split into ``{"train": [...], "eval": [...]}`` (500 / 100)."""
    return {split: [text for text, _, _ in rows] for split, rows in _split_grid().items()}


def prompts(split: str = "train", num: int | None = None) -> list[str]:
    """The first ``num`` prompts of ``split`` (all when None), in a fixed order.

    Raises:
        InputError: unknown split, or ``num`` not in 1..len(split).
    """
    splits = all_prompts()
    if split not in splits:
        raise InputError(f"--split: unknown split {split!r}; choose train or eval")
    available = splits[split]
    if num is None:
        return list(available)
    if not 1 <= num <= len(available):
        raise InputError(f"--num: must be in 1..{len(available)} for split {split}, got {num}")
    return available[:num]


def prompt_rows(split: str = "train", num: int | None = None) -> list[dict]:
    """Prompts as rows of a "prompts" artefact (prompt_id = sha256 of the text)."""
    return [
        {"prompt_id": hashlib.sha256(p.encode()).hexdigest(), "prompt": p, "source": f"{SOURCE_LABEL}:{split}"}
        for p in prompts(split, num)
    ]


# ----------------------------------------------------------------------------- responses

_BRIEF = (
    "{topic} is a key idea in {field}.",
    "{topic} matters in {field}.",
    "{topic} is worth learning.",
    "{topic} is central to {field}.",
)
_PLAIN = (
    "{topic} is an important part of {field}.",
    "{topic} is studied closely in {field}.",
    "people meet {topic} often in {field}.",
)
_PLAIN_MORE = (
    "It connects simple rules to effects we can see.",
    "A good first step is to learn the main terms.",
    "Many useful examples come from daily life.",
    "It helps to draw a small diagram.",
    "Teachers often start with a clear example.",
)
_DETAILED_STEPS = (
    "learn the basic terms",
    "look at a simple example",
    "ask what causes what",
    "compare it with a related idea",
    "check the idea against real data",
    "draw a diagram of the parts",
    "explain it to a friend",
    "note the common mistakes",
)


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


CONTINUATIONS = ("fixed", "varied")


def response(prompt_index: int, style: str, rng: np.random.Generator, continuations: str = "fixed") -> str:
    """One response of ``style`` to train prompt ``prompt_index`` (its topic fills the text).

    ``continuations="fixed"``: the style's one text for this topic (``rng`` unused);
    ``"varied"``: phrasings drawn with ``rng``.
    """
    topic, field = _topic_of(prompt_index)
    word = STYLE_FIRST_WORDS[style]
    if continuations == "fixed":
        if style not in STYLES:
            raise InputError(f"style: unknown style {style!r}; known: {list(STYLES)}")
        return {
            "brief": f"{word}, {topic} is a key idea in {field}.",
            "plain": f"{word}, {topic} is an important part of {field}. It connects simple rules to effects we can see.",
            "detailed": (
                f"{word}, here is a careful answer about {topic}. First, learn the basic terms. "
                f"Second, look at a simple example. Third, ask what causes what. "
                f"Finally, check the idea against real data. In short, studying {topic} pays off in {field}."
            ),
        }[style]
    if continuations != "varied":
        raise InputError(f"continuations: must be one of {list(CONTINUATIONS)}, got {continuations!r}")
    if style == "brief":  # ~8 words
        return f"{word}, " + rng.choice(_BRIEF).format(topic=topic, field=field)
    if style == "plain":  # ~25 words
        more = rng.choice(_PLAIN_MORE, size=2, replace=False)
        return f"{word}, " + " ".join([rng.choice(_PLAIN).format(topic=topic, field=field), *more])
    if style == "detailed":  # ~45 words
        steps = rng.choice(_DETAILED_STEPS, size=4, replace=False)
        return (
            f"{word}, here is a careful answer about {topic}. "
            f"First, {steps[0]}. Second, {steps[1]}. Third, {steps[2]}. Finally, {steps[3]}. "
            f"In short, studying {topic} pays off in {field}."
        )
    raise InputError(f"style: unknown style {style!r}; known: {list(STYLES)}")


def _topic_of(prompt_index: int) -> tuple[str, str]:
    _, topic, field = _split_grid()["train"][prompt_index]
    return topic, field


def style_of(text: str) -> str | None:
    """The style whose first word starts ``text`` (None when none does): the judge's category."""
    words = text.strip().split(maxsplit=1)
    first = words[0].rstrip(",.!:;") if words else ""
    for style, word in STYLE_FIRST_WORDS.items():
        if first == word:
            return style
    return None


def check_style_mix(style_mix) -> tuple[float, ...]:
    """Return ``style_mix`` as a tuple after checking it is a distribution over STYLES.

    Raises:
        InputError: not len(STYLES) finite non-negative numbers summing to 1 (±1e-6).
    """
    try:
        mix = tuple(float(x) for x in style_mix)
    except (TypeError, ValueError) as err:
        raise InputError(f"style_mix: must be {len(STYLES)} numbers, got {style_mix!r}") from err
    if len(mix) != len(STYLES) or not all(math.isfinite(x) and x >= 0 for x in mix) or abs(sum(mix) - 1) > 1e-6:
        raise InputError(f"style_mix: must be {len(STYLES)} non-negative numbers summing to 1, got {style_mix!r}")
    return mix


def corpus(
    num_prompts: int | None = None,
    style_mix=DEFAULT_STYLE_MIX,
    seed: int = 0,
    responses_per_prompt: int = 4,
    continuations: str = "fixed",
) -> list[dict]:
    """SFT examples ``{"prompt", "response", "style"}`` for the first ``num_prompts`` train prompts.

    Each prompt gets ``responses_per_prompt`` responses. Styles are assigned with exact
    counts (largest-remainder rounding of ``style_mix`` × number of examples) and shuffled,
    so the corpus' category frequencies equal ``style_mix`` up to rounding. Several
    responses per prompt, in different styles, keep a small model from memorising a
    per-prompt style instead of the marginal ``style_mix``.

    Raises:
        InputError: a bad ``style_mix`` or ``num_prompts``.
    """
    mix = check_style_mix(style_mix)
    texts = prompts("train", num_prompts)
    total = len(texts) * responses_per_prompt
    raw = np.asarray(mix) * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    rng = np.random.default_rng(seed)
    styles = rng.permutation(np.repeat(np.arange(len(STYLES)), counts))
    examples = []
    for k, style_index in enumerate(styles):
        prompt_index = k % len(texts)
        style = STYLES[style_index]
        examples.append({"prompt": texts[prompt_index], "response": response(prompt_index, style, rng, continuations),
                         "style": style})
    return examples


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


def _collate(pad_token_id: int):
    import torch

    def collate(batch: list[dict]) -> dict:
        # Right padding for training: positions stay 0..len-1 for every row.
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_token_id)  # (B, T)
        labels = torch.full((len(batch), width), -100)  # (B, T)
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def sft(model, tokenizer, examples, *, steps: int, seed: int = 0, batch_size: int = 32, learning_rate: float = 5e-3):
    """Supervised fine-tuning with transformers' ``Trainer`` on CPU; returns the trained model."""
    import tempfile

    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class LogCallback(TrainerCallback):
        # Trainer prints its log dicts to stdout; send them to the logger instead.
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log.info("sft step %d/%d: loss %.4f", state.global_step, state.max_steps, float(logs["loss"]))

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
            use_cpu=True,
            seed=seed,
            data_seed=seed,
            dataloader_pin_memory=False,
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=sft_features(tokenizer, examples),
            data_collator=_collate(tokenizer.pad_token_id),
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LogCallback())
        trainer.train()
    model.eval()
    return model


# ----------------------------------------------------------------------------- evaluation


def first_token_category_probs(model, tokenizer, prompts, batch_size: int = 64) -> np.ndarray:
    """Exact probability of each category at the first response token, per prompt.

    Returns:
        array ``(num_prompts, len(STYLES) + 1)``: columns in :data:`STYLES` order, then the
        mass on any other token ("unmatched"); rows sum to 1.

    Raises:
        InputError: the tokenizer does not make each style word one token.
    """
    from linepo.stages.models import first_response_token_probs

    token_ids = [style_token_ids(tokenizer)[s] for s in STYLES]
    probs = first_response_token_probs(model, tokenizer, prompts, batch_size).numpy()  # (N, V)
    matched = probs[:, token_ids]  # (N, S)
    rows = np.concatenate([matched, np.clip(1 - matched.sum(-1, keepdims=True), 0, None)], axis=1)
    return rows / rows.sum(axis=1, keepdims=True) if len(rows) else np.zeros((0, len(STYLES) + 1))


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
