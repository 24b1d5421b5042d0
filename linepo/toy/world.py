"""The embedded toy world: prompts, three answer styles and an SFT corpus, generated here.

    linepo embedded prompts --out results/embedded/prompts_train.parquet --split train --num 400

It is the LLM-shaped twin of the paper's 3×3 game (§4): every response has one of three
STYLES, and the style is the category that the synthetic intransitive judge compares.

- ``brief`` responses start with "Briefly," and are short,
- ``plain`` responses start with "Sure," and are medium,
- ``detailed`` responses start with "Certainly," and are long.

The first word decides the category; the tokenizer (:mod:`linepo.toy.model`) makes each
first word a single token right after the assistant marker, so a policy's exact
distribution over categories is one forward pass away. The SFT corpus draws each
response's style from ``style_mix`` (default the paper's start point [0.2, 0.5, 0.3], far
from the game's Nash policy [4/11, 3/11, 4/11]). Lengths differ by style so that average
output length is a meaningful statistic.

By default (``continuations="fixed"``) each (prompt, style) has one answer text, so a
response *is* its style for the policy's purposes and the LLM realises the 3×3 game.
With ``"varied"`` each style has many continuations (random phrasings): a sequence-level
loss can then lower one sampled text's probability through its continuation tokens
without moving mass out of its style (README, "Choosing the default").

Everything is deterministic given the seed. Numpy only.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math

import numpy as np

from linepo.errors import InputError
from linepo.stages.judges.synthetic import DEFAULT_CATEGORIES, DEFAULT_FIRST_WORDS

#: The ``source`` the embedded prompts record in every prompts file ("linepo.embedded:train"):
#: data, kept when the module moved, so that files and node ids stay the same.
SOURCE_LABEL = "linepo.embedded"

#: The three styles are the default synthetic oracle's categories, and their first words
#: its first words: the toy world is built to be judged by the paper's game (numpy-only import).
STYLES = DEFAULT_CATEGORIES
STYLE_FIRST_WORDS = {style: word for word, style in DEFAULT_FIRST_WORDS.items()}
DEFAULT_STYLE_MIX = (0.2, 0.5, 0.3)  # the paper's start point PAPER_INIT

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


