"""Prefix-shared pairwise judging (linepo.stages.judges.prefix) gives the unshared path's numbers.

The same judge object is run with and without sharing on the sequences the judge builds
(Llama-3 template and tokenizer, OffsetBias prompt); a tiny Llama with a wide
initialisation makes p(a) depend on the content (0.2-0.97 here), so a wrong position, mask
or cache row would show far above the 1e-5 float32 tolerance.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import build_tiny_judge  # noqa: E402
from real_models import llama3_tokenizer, tiny_causal_lm  # noqa: E402

from linepo.stages.judges import make_judge  # noqa: E402
from linepo.stages.judges.pairwise import PairwiseLMJudge  # noqa: E402
from linepo.stages.judges.prefix import cache_argument, prefix_tree  # noqa: E402

WORDS = "the moon pulls water toward it so oceans bulge and tides rise twice a day".split()


def _model(dtype="float32"):
    import torch

    model = tiny_causal_lm(llama3_tokenizer(), "llama", seed=1, tie=False, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                           initializer_range=0.2)
    return model.to(getattr(torch, dtype))


def _judges(model, **kwargs):
    tok = llama3_tokenizer()
    common = dict(device="cpu", min_answer_mass=0.0, **kwargs)
    return (PairwiseLMJudge(model, tok, share_prefixes=True, **common),
            PairwiseLMJudge(model, tok, share_prefixes=False, **common))


def _all_pairs(samples: dict[str, list[str]], interleave: bool = True):
    """Every ordered pair of each prompt's samples; prompts interleaved (a batch that mixes them)."""
    per_prompt = [[(q, rs[i], rs[j]) for i, j in itertools.permutations(range(len(rs)), 2)]
                  for q, rs in samples.items()]
    rows = [t for group in itertools.zip_longest(*per_prompt) for t in group if t] if interleave else \
        [t for group in per_prompt for t in group]
    return [list(col) for col in zip(*rows)]


def _ragged(seed: int = 0, n: int = 5, prompts=("Explain tides.", "Why is the sky blue?", "42?")):
    rng = np.random.default_rng(seed)
    return {q: [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 70)))) for _ in range(n)] for q in prompts}


@pytest.fixture(scope="module")
def model():
    return _model()


def test_the_tree_shares_exactly_what_the_token_ids_share():
    seqs = [[1, 2, 3, 4, 5, 9], [1, 2, 3, 4, 6, 9], [1, 2, 3, 7, 9], [1, 2, 8, 9], [5, 5], [1, 2, 3, 4, 5, 9, 9]]
    keys = [("q", "x"), ("q", "x"), ("q", "y"), ("q", "z"), ("r", "x"), ("s", "x")]
    nodes, leaves = prefix_tree(seqs, keys)
    # Group q shares [1, 2]; its first response x shares [1, 2, 3, 4]; y and z are alone.
    assert nodes == [(None, 0, 2, 0), (0, 2, 4, 0)]
    assert leaves[:4] == [(1, 4, 6, 0), (1, 4, 6, 1), (0, 2, 5, 2), (0, 2, 4, 3)]
    assert leaves[4:] == [(None, 0, 2, 4), (None, 0, 7, 5)]  # single-sequence groups run whole
    # A sequence that is a prefix of another keeps its last token for the leaf.
    nodes, leaves = prefix_tree([[1, 2, 3], [1, 2, 3, 4]], [("q", "x")] * 2)
    assert nodes == [(None, 0, 2, 0)] and leaves == [(0, 2, 3, 0), (0, 2, 4, 1)]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_shared_probabilities_equal_the_unshared_path_in_float32(model, batch_size):
    shared, plain = _judges(model, batch_size=batch_size)
    assert shared._prefixes is not None and plain._prefixes is None
    samples = _ragged(n=5)
    samples["Explain tides."][3] = samples["Explain tides."][0]  # a repeated sample: ½ without a forward
    samples["42?"] = samples["42?"][:2]  # two samples: a first response opens one sequence only
    prompts, a, b = _all_pairs(samples)
    triples = list(zip(prompts, a, b))
    seqs, keys = shared._sequences(triples), [t[:2] for t in triples]
    p_shared, _ = shared._first_choice_probs(seqs, keys)
    mass_shared = shared._masses.copy()
    p_plain, _ = plain._first_choice_probs(seqs, keys)
    assert p_plain.max() - p_plain.min() > 0.3  # content matters to this judge
    np.testing.assert_allclose(p_shared, p_plain, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.log(mass_shared), np.log(plain._masses), rtol=0, atol=1e-5)
    prob_shared, failed_shared = shared.probabilities(prompts, a, b)
    prob_plain, failed_plain = plain.probabilities(prompts, a, b)
    assert not failed_shared.any() and not failed_plain.any()
    np.testing.assert_allclose(prob_shared, prob_plain, rtol=0, atol=1e-5)
    same = [i for i in range(len(a)) if a[i] == b[i]]
    assert len(same) == 2 and (prob_shared[same] == 0.5).all()
    # Sharing does at most what the unshared path does, and here much less.
    assert shared.tokens_computed < 0.6 * plain.tokens_computed


def test_truncated_and_too_long_sequences_and_failures_are_unchanged(model):
    max_length = PairwiseLMJudge(model, llama3_tokenizer(), device="cpu").overhead + 70
    samples = _ragged(seed=1, n=4)
    samples["Explain tides."][1] = "tides " * 200  # cut in the responses
    samples["Why is the sky blue?"] = ["short", "blue " * 150, "sky " * 90, "a <|eot_id|> spelled token"]
    samples["Why " * 300 + "?"] = ["x", "y y", "z z z"]  # cut in the instruction too
    prompts, a, b = _all_pairs(samples)
    shared, plain = _judges(model, batch_size=4, max_length=max_length)
    triples = list(zip(prompts, a, b))
    seqs = shared._sequences(triples)
    assert max(len(s) for s in seqs if s is not None) <= max_length
    p_plain, _ = plain._first_choice_probs(seqs, [t[:2] for t in triples])
    p_shared, _ = shared._first_choice_probs(seqs, [t[:2] for t in triples])
    np.testing.assert_allclose(p_shared, p_plain, rtol=0, atol=1e-5)
    # Failures: a threshold between the answer masses fails some comparisons, the same ones, for the same reasons.
    threshold = float(np.median(plain._masses))
    for judge in (shared, plain):
        judge.min_answer_mass = threshold
    prob_s, failed_s = shared.probabilities(prompts, a, b)
    reasons_s = shared.last_reasons
    prob_p, failed_p = plain.probabilities(prompts, a, b)
    assert failed_s.any() and not failed_s.all()
    assert failed_s.tolist() == failed_p.tolist() and shared.failures == plain.failures
    assert [r is None for r in reasons_s] == [r is None for r in plain.last_reasons]
    np.testing.assert_allclose(prob_s[~failed_s], prob_p[~failed_p], rtol=0, atol=1e-5)
    # Sequences that cannot be cut to fit (None) fail as too long, the others are judged as alone.
    seqs[1] = seqs[4] = None
    p_gaps, failed_gaps = shared._first_choice_probs(seqs, [t[:2] for t in triples])
    assert failed_gaps[[1, 4]].all() and np.isnan(p_gaps[[1, 4]]).all()
    keep = [i for i in range(len(seqs)) if i not in (1, 4)]
    np.testing.assert_allclose(p_gaps[keep], p_plain[keep], rtol=0, atol=1e-5)
    tight = PairwiseLMJudge(model, llama3_tokenizer(), device="cpu", max_length=shared.overhead - 1)
    prob, failed = tight.probabilities(["Q", "Q"], ["x", "same"], ["y", "same"])
    assert failed.tolist() == [True, False] and tight.last_reasons[0].startswith("too long") and prob[1] == 0.5


def test_bf16_stays_within_its_stated_tolerance():
    """bf16: |Δp| ≤ 1e-2 (measured on CPU: ~2e-3, about what the unshared path itself moves
    between batch sizes 1 and 3, ~4e-3: bf16 rounding, not a sharing error)."""
    import torch

    if not hasattr(torch, "bfloat16"):  # pragma: no cover
        pytest.skip("no bf16 in this torch")
    shared, plain = _judges(_model("bfloat16"), batch_size=3)
    prompts, a, b = _all_pairs(_ragged(n=5, prompts=("Explain tides.", "Why is the sky blue?")))
    triples = list(zip(prompts, a, b))
    seqs, keys = shared._sequences(triples), [t[:2] for t in triples]
    p_shared, _ = shared._first_choice_probs(seqs, keys)
    p_plain, _ = plain._first_choice_probs(seqs, keys)
    assert np.abs(p_shared - p_plain).max() <= 1e-2


def test_the_tiny_judge_config_shares_by_default_and_can_switch_it_off(tmp_path):
    from linepo.commands.judge import judge_config_keys

    path = build_tiny_judge(tmp_path / "judge")
    config = {"type": "pairwise_lm", "model": path, "device": "cpu", "min_answer_mass": 0.0, "batch_size": 3}
    shared, plain = make_judge(config), make_judge({**config, "share_prefixes": False})
    assert shared._prefixes is not None and plain._prefixes is None
    prompts, a, b = _all_pairs({"Say hi.": ["Hi!", "Hello there, friend.", "Sure, here it is.", "Briefly, hi.",
                                            "Certainly, in detail: hello."],
                                "Explain.": ["Briefly, the answer.", "Certainly, in detail: words words.", "x"]})
    np.testing.assert_allclose(shared.probabilities(prompts, a, b)[0], plain.probabilities(prompts, a, b)[0],
                               rtol=0, atol=1e-5)
    assert "share_prefixes" in judge_config_keys(["pairwise_lm"])


def test_models_without_cache_support_fall_back_to_whole_sequences(model):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    class NoCache(torch.nn.Module):  # a forward that takes no KV cache
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              logits_to_keep=logits_to_keep)

    assert cache_argument(model) in ("cache", "past_key_values")
    wrapped = NoCache(model)
    assert cache_argument(wrapped) is None
    judge = PairwiseLMJudge(wrapped, llama3_tokenizer(), device="cpu", min_answer_mass=0.0)
    assert judge._prefixes is None
    prob, failed = judge.probabilities(["Q", "Q"], ["x", "y"], ["y", "x"])
    assert not failed.any() and prob[0] + prob[1] == 1.0
    sliding = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True,
                                           sliding_window=8, max_window_layers=0))
    assert cache_argument(sliding) is None  # a sliding window would drop part of a shared prefix


def test_share_prefixes_is_how_a_judge_runs_not_what_it_computes(tmp_path):
    """Switching sharing in the workflow re-judges nothing: not in node ids, passed to the jobs' judge config."""
    import copy
    import json

    import yaml

    from linepo.errors import InputError
    from linepo.workflow.config import validate_config
    from linepo.workflow.wiring import Wiring
    from workflow_utils import REPO

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    base["judge"] = {"type": "pairwise_lm", "model": build_tiny_judge(tmp_path / "judge"), "min_answer_mass": 0.0}
    off = copy.deepcopy(base)
    off["judge"]["share_prefixes"] = False
    plain, switched = Wiring(validate_config(copy.deepcopy(base))), Wiring(validate_config(off))
    assert switched.plan.prefs.keys() == plain.plan.prefs.keys()
    assert switched.eval.comparisons == plain.eval.comparisons
    assert "share_prefixes" not in switched.config["judge"]
    assert "share_prefixes" not in json.loads(plain.judge_spec)  # unset: the params as before the key existed
    assert json.loads(switched.judge_spec)["share_prefixes"] is False
    assert json.loads(switched.eval_judge_spec(switched.eval.judge))["share_prefixes"] is False  # eval judge = judge
    make_judge(json.loads(switched.judge_spec))  # the jobs' judge reads it
    synthetic = copy.deepcopy(base)
    synthetic["judge"] = {"type": "synthetic", "share_prefixes": True}
    with pytest.raises(InputError, match="judge.share_prefixes: only a judge of type pairwise_lm"):
        validate_config(synthetic)
