"""The embedded default policy: prompts, corpus, tokenizer, category probabilities, build.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_embedded.py -q
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from linepo import toy as embedded
from linepo.cli import main
from linepo.errors import InputError
from linepo.schemas import read_table

torch = pytest.importorskip("torch")



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny policy loaded back through load_policy, as users load it."""
    from linepo.stages.models import load_policy

    path = tmp_path_factory.mktemp("policy") / "tiny"
    _, trained_tokenizer = embedded.build_random(path)
    model, tokenizer = load_policy(path, device="cpu")
    return model, tokenizer, trained_tokenizer


def test_prompts_are_deterministic_distinct_and_split():
    splits = embedded.all_prompts()
    assert len(splits["train"]) == 500 and len(splits["eval"]) == 100
    assert len(set(splits["train"]) | set(splits["eval"])) == 600
    assert embedded.prompts("eval", 5) == splits["eval"][:5] == embedded.all_prompts()["eval"][:5]
    with pytest.raises(InputError, match="^--num:"):
        embedded.prompts("eval", 101)
    with pytest.raises(InputError, match="^--split:"):
        embedded.prompts("test")


def test_corpus_style_counts_first_words_and_lengths():
    examples = embedded.corpus(100, style_mix=(0.2, 0.5, 0.3), seed=3)
    counts = collections.Counter(e["style"] for e in examples)
    assert counts == {"brief": 80, "plain": 200, "detailed": 120}  # exact: 400 examples
    lengths = collections.defaultdict(list)
    for e in examples:
        assert e["response"].startswith(embedded.STYLE_FIRST_WORDS[e["style"]] + ",")
        assert embedded.style_of(e["response"]) == e["style"]
        lengths[e["style"]].append(len(e["response"].split()))
    means = [np.mean(lengths[s]) for s in embedded.STYLES]
    assert means[0] < means[1] < means[2], f"brief < plain < detailed in length, got {means}"
    assert embedded.corpus(100, seed=3) == examples
    assert embedded.corpus(100, seed=4) != examples


@pytest.mark.parametrize("continuations", embedded.CONTINUATIONS)
def test_fixed_continuations_give_one_text_per_prompt_and_style(continuations):
    """"fixed": a response is its style (the LLM realises the 3×3 game); "varied": phrasings differ."""
    examples = embedded.corpus(100, seed=3, continuations=continuations)
    texts = collections.defaultdict(set)
    for e in examples:
        assert embedded.style_of(e["response"]) == e["style"]
        texts[(e["prompt"], e["style"])].add(e["response"])
    most = max(len(v) for v in texts.values())
    assert most == 1 if continuations == "fixed" else most > 1
    with pytest.raises(InputError, match="continuations"):
        embedded.response(0, "brief", np.random.default_rng(0), "many")


def test_style_of_and_style_mix_checks():
    assert embedded.style_of("  Certainly, here") == "detailed"
    assert embedded.style_of("Sure") == "plain"
    assert embedded.style_of("Surely not") is None
    assert embedded.style_of("") is None
    for bad in [(0.5, 0.5), (0.5, 0.6, -0.1), (0.3, 0.3, 0.3), ("a", 0, 1)]:
        with pytest.raises(InputError, match="^style_mix:"):
            embedded.corpus(10, style_mix=bad)


def test_style_words_are_single_tokens_after_assistant_marker(tiny):
    _, tokenizer, trained = tiny
    ids = embedded.style_token_ids(tokenizer)
    assert len(set(ids.values())) == 3
    assert ids == embedded.style_token_ids(trained)
    for style, word in embedded.STYLE_FIRST_WORDS.items():
        assert tokenizer.convert_ids_to_tokens(ids[style]) == word
    # The SFT targets start with that token: the category is the first response token.
    examples = embedded.corpus(20, seed=0)
    for example, feature in zip(examples, embedded.sft_features(tokenizer, examples)):
        first = next(t for t, label in zip(feature["input_ids"], feature["labels"]) if label != -100)
        assert first == ids[example["style"]]
        assert feature["labels"][-1] == tokenizer.eos_token_id


def test_autotokenizer_loads_the_same_tokenizer(tiny):
    """AutoTokenizer rebuilds a qwen2 checkpoint's tokenizer as Qwen2Tokenizer: no drift allowed."""
    _, tokenizer, trained = tiny
    assert len(tokenizer) == len(trained) == tokenizer.vocab_size
    texts = [e["response"] for e in embedded.corpus(30)] + ["Hi,there  \n\n x 12345 's é"]
    for text in texts:
        assert tokenizer(text)["input_ids"] == trained(text)["input_ids"]


def test_first_token_category_probs_sum_to_one_and_ignore_padding(tiny):
    model, tokenizer, _ = tiny
    prompts = embedded.prompts("eval", 7)
    probs = embedded.first_token_category_probs(model, tokenizer, prompts, batch_size=4)
    assert probs.shape == (7, len(embedded.STYLES) + 1)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    # Left padding must not change a prompt's probabilities (positions count real tokens).
    alone = np.vstack([embedded.first_token_category_probs(model, tokenizer, [p]) for p in prompts])
    np.testing.assert_allclose(probs, alone, atol=1e-5)


def test_first_token_category_probs_needs_style_tokens(tiny):
    model, _, _ = tiny
    with pytest.raises(InputError, match="^tokenizer: style word"):
        embedded.first_token_category_probs(model, _ByteTokenizer(), ["Hi"])


class _ByteTokenizer:
    """A stand-in tokenizer with one token per byte: no style word is a single token."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(text.encode())}


@pytest.mark.slow
def test_build_reaches_style_mix(tmp_path):
    from linepo.stages.models import load_policy

    out = tmp_path / "embedded"
    summary = embedded.build(
        out, seed=0, steps=60, num_prompts=100, learning_rate=1e-2,
        hidden_size=64, num_hidden_layers=2, intermediate_size=192,
    )
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    model, tokenizer = load_policy(out, device="cpu")
    probs = embedded.first_token_category_probs(model, tokenizer, embedded.prompts("eval")).mean(axis=0)
    np.testing.assert_allclose(probs[:-1], embedded.DEFAULT_STYLE_MIX, atol=0.1)
    assert probs[-1] < 0.1
    np.testing.assert_allclose(list(summary["eval_category_probs"].values()), probs, atol=1e-3)


def test_cli_embedded_prompts(tmp_path, capsys):
    out = tmp_path / "prompts.parquet"
    assert main(["embedded", "prompts", "--out", str(out), "--split", "eval", "--num", "12"]) == 0
    table = read_table(out, "prompts")
    assert table.num_rows == 12
    assert table.column("prompt").to_pylist() == embedded.prompts("eval", 12)
    assert set(table.column("source").to_pylist()) == {"linepo.embedded:eval"}
    assert len(set(table.column("prompt_id").to_pylist())) == 12


def test_cli_embedded_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "prompts.parquet"
    assert main(["embedded", "prompts", "--out", str(out), "--num", "0"]) == 2
    assert main(["embedded", "build", "--out", str(tmp_path / "p"), "--steps", "0"]) == 2
    assert main(["embedded", "build", "--out", str(tmp_path / "p"), "--style-mix", "0.5", "0.5", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("linepo embedded: error: ") for line in err)
    assert list(tmp_path.iterdir()) == []
