"""Judges: the synthetic oracle, the pairwise LM judge and the reward-model judge.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_judges.py -q

LM judges run on tiny randomly initialised Llama models (and a BPE tokenizer trained on
the spot) saved to a tmp folder: nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import build_tiny_judge

from linepo.errors import InputError
from linepo.stages.judges import (
    OFFSETBIAS_USER_TEMPLATE,
    Judge,
    JudgeError,
    comparison_uniform,
    make_judge,
)

# ----------------------------------------------------------------------------- tiny models

@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    return build_tiny_judge(tmp_path_factory.mktemp("judge_lm"))


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return build_tiny_judge(tmp_path_factory.mktemp("judge_rm"), classifier=True)


@pytest.fixture(scope="module")
def lm_judge(lm_path):
    return make_judge({"type": "pairwise_lm", "model": lm_path, "batch_size": 3, "max_length": 2048,
                       "device": "cpu"})


# ----------------------------------------------------------------------------- synthetic


STYLE = {0: "Briefly,", 1: "Sure,", 2: "Certainly,", 3: "Hmm,"}  # 3: unmatched


def test_synthetic_win_rates_match_matrix_within_3_standard_errors():
    judge = make_judge()
    rng = np.random.default_rng(0)
    n = 20_000
    ca, cb = rng.integers(0, 4, n), rng.integers(0, 4, n)
    # Distinct texts, so each comparison has its own coin.
    a = [f"{STYLE[c]} answer {k}." for k, c in enumerate(ca)]
    b = [f"{STYLE[c]} reply {k}." for k, c in enumerate(cb)]
    prob, outcome, failed = judge.judge(["prompt"] * n, a, b, seed=7)
    assert not failed.any()
    expected = judge.augmented_matrix
    assert np.array_equal(prob, expected[ca, cb])
    for i in range(4):
        for j in range(4):
            cell = (ca == i) & (cb == j)
            p, m = expected[i, j], int(cell.sum())
            assert m > 1000
            rate = outcome[cell].mean()
            if p in (0.0, 1.0):
                assert rate == p
            else:
                assert abs(rate - p) <= 3 * np.sqrt(p * (1 - p) / m), (i, j, rate, p)


def test_outcomes_are_deterministic_whatever_the_batch_order():
    judge = make_judge()
    prompts = [f"prompt {k % 7}" for k in range(200)]
    a = [f"{STYLE[k % 3]} a{k}" for k in range(200)]
    b = [f"{STYLE[(k + 1) % 3]} b{k}" for k in range(200)]
    _, outcome, _ = judge.judge(prompts, a, b, seed=3)
    perm = np.random.default_rng(1).permutation(200)
    _, shuffled, _ = judge.judge([prompts[i] for i in perm], [a[i] for i in perm], [b[i] for i in perm], seed=3)
    assert np.array_equal(shuffled, outcome[perm])
    # One at a time, and inside a batch of other comparisons: the same coin.
    for k in (0, 17, 199):
        assert judge.judge([prompts[k]], [a[k]], [b[k]], seed=3)[1][0] == outcome[k]
    # The reversed comparison gets the complementary outcome.
    _, reversed_outcome, _ = judge.judge(prompts, b, a, seed=3)
    assert np.array_equal(reversed_outcome, 1 - outcome)
    # Another seed, other coins.
    assert not np.array_equal(judge.judge(prompts, a, b, seed=4)[1], outcome)
    assert comparison_uniform(1, "p", "ab", "c") != comparison_uniform(1, "p", "a", "bc")


def test_first_word_rule():
    judge = make_judge()
    assert judge.categories == ("brief", "plain", "detailed")
    got = judge.categorize(["Briefly, yes.", "Sure! here", "Certainly... long", "\u201cSure,\u201d he said",
                            "sure, lower case", "Hmm", "", "   ", "BrieflyX"])
    assert got.tolist() == [0, 1, 2, 1, 3, 3, 3, 3, 3]
    folded = make_judge({"type": "synthetic", "case_sensitive": False})
    assert folded.categorize(["sure, x", "CERTAINLY."]).tolist() == [1, 2]
    custom = make_judge({"type": "synthetic", "categories": ["x", "y"], "matrix": [[0.5, 0.7], [0.3, 0.5]],
                         "first_words": {"Yes": "x", "No": "y", "Nope": "y"}})
    assert custom.categorize(["Yes.", "No", "Nope!", "Maybe"]).tolist() == [0, 1, 1, 2]
    prob, _ = custom.probabilities(["q"] * 3, ["Yes", "Maybe", "Maybe"], ["No", "Nope", "?"])
    assert prob.tolist() == [0.7, 0.0, 0.5]


def test_length_rule_buckets_words_and_tokens():
    judge = make_judge({"type": "synthetic", "rule": "length", "length_thresholds": [3, 6]})
    texts = ["one two", "one two three", "a b c d e", "a b c d e f g", ""]
    assert judge.categorize(texts).tolist() == [0, 1, 1, 2, 3]
    tokens = make_judge({"type": "synthetic", "rule": "length", "length_unit": "tokens", "length_thresholds": [3, 6]})
    # "Hi, you." is 2 words but 4 tokens (Hi , you .).
    assert tokens.categorize(["Hi, you.", "Hi you"]).tolist() == [1, 0]


def test_unmatched_loses_to_every_category():
    judge = make_judge()
    prob, failed = judge.probabilities(["q"] * 4, ["Nope", "Nope", "Nope", "Nope"],
                                       ["Briefly", "Sure", "Certainly", "Nah"])
    assert prob.tolist() == [0.0, 0.0, 0.0, 0.5] and not failed.any()


def test_exploitability_nash_and_monte_carlo_distribution():
    judge = make_judge()
    nash = judge.nash()
    assert np.allclose(nash, [4 / 11, 3 / 11, 4 / 11])
    assert judge.exploitability(nash) < 1e-9
    assert judge.exploitability([0.2, 0.5, 0.3]) > 0.1
    # Mass on unmatched responses is exploitable too.
    assert judge.exploitability(np.append(nash * 0.9, 0.1)) > 0.05
    responses = ["Briefly"] * 20 + ["Sure"] * 50 + ["Certainly"] * 30 + ["Oops"] * 0
    probs, stderr = judge.category_distribution(responses)
    assert np.allclose(probs, [0.2, 0.5, 0.3, 0.0])
    assert np.allclose(stderr, np.sqrt(probs * (1 - probs) / 100))
    assert abs(judge.exploitability(probs) - judge.exploitability([0.2, 0.5, 0.3])) < 1e-12


@pytest.mark.parametrize(
    "config, key",
    [
        ({"type": "synthetic", "matrix": [[0.5, 0.9, 0.1], [0.2, 0.5, 0.1], [0.9, 0.9, 0.5]]}, "key matrix"),
        ({"type": "synthetic", "matrix": [[0.5, 0.5], [0.5, 0.5]]}, "key matrix"),
        ({"type": "synthetic", "matrix": "no"}, "key matrix"),
        ({"type": "telepathy"}, "key type"),
        ({}, "key type"),
        ({"type": "synthetic", "colour": 1}, "key colour"),
        ({"type": "synthetic", "first_words": {"Yes": "nonsense"}}, "key first_words.Yes"),
        ({"type": "synthetic", "rule": "length", "length_thresholds": [5]}, "key length_thresholds"),
        ({"type": "synthetic", "rule": "length", "length_thresholds": [5, 3]}, "key length_thresholds"),
        ({"type": "synthetic", "rule": "vibes"}, "key rule"),
        ({"type": "synthetic", "seed": "x"}, "key seed"),
        ({"type": "pairwise_lm", "model": "/no/such/model"}, "key model"),
        ({"type": "reward_model", "model": "./missing-rm"}, "key model"),
        ({"type": "pairwise_lm"}, "key model"),
    ],
)
def test_bad_configs_raise_input_error_naming_the_key(config, key):
    with pytest.raises(InputError) as err:
        make_judge(config, source="--judge-config j.yaml")
    assert str(err.value).startswith(f"--judge-config j.yaml {key}:"), str(err.value)
    assert "\n" not in str(err.value)


def test_a_judge_returning_probabilities_outside_0_1_is_rejected():
    class Broken(Judge):
        name = "broken"

        def _probabilities(self, prompts, a, b):
            return np.array([0.5, 1.5]), np.zeros(2, dtype=bool)

    with pytest.raises(JudgeError, match="'broken'.*outside"):
        Broken().probabilities(["q", "q"], ["a", "b"], ["c", "d"])

    class Nan(Judge):
        name = "nan"

        def _probabilities(self, prompts, a, b):
            return np.array([np.nan, np.nan]), np.array([True, False])

    with pytest.raises(JudgeError, match="'nan'"):
        Nan().probabilities(["q", "q"], ["a", "b"], ["c", "d"])


def test_synthetic_path_never_imports_torch():
    code = (
        "import sys\n"
        "from linepo.stages.judges import make_judge\n"
        "import linepo.stages.preferences, linepo.commands.judge, linepo.commands.pairs\n"
        "j = make_judge()\n"
        "j.judge(['q'], ['Sure'], ['Briefly'], seed=0); j.exploitability(j.nash())\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout's linepo, whatever is installed
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


# ----------------------------------------------------------------------------- pairwise LM


def _first_choice_prob(judge, instruction, first, second):
    """p("a") / (p("a") + p("b")) from an unpadded forward pass of the formatted prompt."""
    import torch

    text = judge._conversation(instruction, first, second)
    ids = judge.tokenizer(text, add_special_tokens=False)["input_ids"] + judge.forced_ids
    with torch.inference_mode():
        logits = judge.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    logp = torch.log_softmax(logits, -1)[list(judge.choice_ids)]
    return float(torch.sigmoid(logp[0] - logp[1]))


def test_lm_judge_prompt_is_the_offsetbias_format(lm_judge):
    text = lm_judge.format_prompt("Name a colour.", "Red.", "Blue, obviously.")
    assert text.startswith("<|user|>You are a helpful assistant in evaluating the quality of the outputs")
    assert "# Instruction:\nName a colour.\n# Output (a):\nRed.\n# Output (b):\nBlue, obviously.\n" in text
    assert text.endswith(
        "# Which is better, Output (a) or Output (b)? Your response should be either "
        "\u201cOutput (a)\u201d or \u201cOutput (b)\u201d:<|end|><|assistant|>Output ("
    )
    assert lm_judge.tokenizer.decode([lm_judge.choice_ids[0]]) == "a"
    assert lm_judge.tokenizer.decode([lm_judge.choice_ids[1]]) == "b"
    # The fast path (template rendered once around a marker) equals rendering each time.
    assert lm_judge.renderer.parts is not None
    user = OFFSETBIAS_USER_TEMPLATE.format(input="Q", output_1="x", output_2="y")
    assert lm_judge.renderer(user) == lm_judge.renderer._template(user)


def test_lm_judge_tokenizes_the_fixed_head_once_with_identical_ids(lm_judge):
    assert lm_judge._head is not None
    triples = [("Explain rain.", "Drops.", "Water."), ("\nLeading newline", "a", "b"), ("(paren) first", "a", "b"),
               ("\u00c9t\u00e9 ?", "x\n", " y "), ("42 is?", "", "z"), ("  spaced", "a", "b")]
    whole = lm_judge._encode_texts([lm_judge._conversation(*t) for t in triples])
    assert lm_judge._encode_conversations(triples) == whole


def test_lm_judge_averages_both_orders_and_is_exactly_antisymmetric(lm_judge):
    prompts = ["Say hi.", "Say hi.", "Explain rain.", "Explain rain.", "Q", "Q"]
    a = ["Hi!", "Hello there, friend.", "Water falls.", "Clouds condense vapour into drops that fall.", "same", "x"]
    b = ["Hello there, friend.", "Hi!", "Clouds condense vapour into drops that fall.", "Water falls.", "same", "y"]
    prob, failed = lm_judge.probabilities(prompts, a, b)
    assert not failed.any()
    assert prob[0] + prob[1] == 1.0 and prob[2] + prob[3] == 1.0
    assert prob[4] == 0.5  # identical responses: no forward pass
    for k in (0, 2, 5):
        p_ab = _first_choice_prob(lm_judge, prompts[k], a[k], b[k])
        p_ba = _first_choice_prob(lm_judge, prompts[k], b[k], a[k])
        assert prob[k] == pytest.approx(0.5 * (p_ab + 1 - p_ba), abs=1e-5)
    # Batch composition (padding, neighbours) does not change a comparison.
    alone, _ = lm_judge.probabilities(prompts[2:3], a[2:3], b[2:3])
    assert alone[0] == pytest.approx(prob[2], abs=1e-5)


def test_lm_judge_marks_and_counts_failures_below_the_answer_mass(lm_path):
    judge = make_judge({"type": "pairwise_lm", "model": lm_path, "min_answer_mass": 0.9, "device": "cpu",
                        "max_length": 2048})
    prob, outcome, failed = judge.judge(["Q", "Q", "Q"], ["x", "y", "same"], ["y", "x", "same"], seed=0)
    # A random tiny LM puts ~2/600 of its mass on "a" and "b": nothing answered, nothing guessed.
    assert failed.tolist() == [True, True, False]
    assert np.isnan(prob[:2]).all() and prob[2] == 0.5
    assert outcome.tolist()[:2] == [-1, -1]
    assert judge.failures == 2


def test_lm_judge_truncates_responses_not_the_question(lm_path):
    probe = make_judge({"type": "pairwise_lm", "model": lm_path, "device": "cpu"})
    max_length = probe.overhead + 60
    judge = make_judge({"type": "pairwise_lm", "model": lm_path, "device": "cpu", "max_length": max_length})
    long_a, long_b = "alpha " * 300, "beta " * 40
    ids = judge._truncated("Explain.", long_a, long_b)
    assert ids is not None and len(ids) <= max_length
    text = judge.tokenizer.decode(ids)
    assert "# Instruction:\nExplain.\n# Output (a):\nalpha" in text
    assert "# Output (b):\nbeta" in text and text.endswith("Output (")
    prob, failed = judge.probabilities(["Explain."], [long_a], [long_b])
    assert not failed.any() and 0.0 <= prob[0] <= 1.0
    with pytest.raises(InputError, match="key max_length"):
        make_judge({"type": "pairwise_lm", "model": lm_path, "device": "cpu", "max_length": probe.overhead})


# ----------------------------------------------------------------------------- reward model


def test_reward_model_judge_is_bradley_terry_on_direct_forward_passes(rm_path):
    import torch

    judge = make_judge({"type": "reward_model", "model": rm_path, "batch_size": 2, "device": "cpu"})
    prompts = ["Say hi.", "Say hi.", "Explain rain.", "Explain rain."]
    a = ["Hi!", "Hello there, my good friend.", "Water falls from clouds when drops get heavy.", "Rain."]
    b = ["Hello there, my good friend.", "Hi!", "Rain.", "Rain."]
    prob, failed = judge.probabilities(prompts, a, b)
    assert not failed.any()

    def reward(prompt, response):
        text = judge.format_text(prompt, response)
        ids = judge.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            return float(judge.model(input_ids=torch.tensor([ids])).logits[0, 0])

    for k in range(4):
        expected = 1 / (1 + np.exp(-(reward(prompts[k], a[k]) - reward(prompts[k], b[k]))))
        assert prob[k] == pytest.approx(expected, abs=1e-5)
    assert prob[3] == 0.5
    assert judge.format_text("Q", "A") == "<|user|>Q<|end|><|assistant|>A<|end|>"
