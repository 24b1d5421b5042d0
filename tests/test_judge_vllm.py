"""The vLLM backend of the pairwise judge (linepo.stages.judges.vllm_judge), against a stand-in.

vLLM is not installed here: as for the vLLM sampler (tests/test_sampling.py), a stand-in
``vllm`` module records what the judge asks of it. Its ``LLM`` runs a real tiny causal LM on
the token ids it is given and answers as vLLM does: the top-K log-probs of the one generated
token, or with ``prompt_logprobs=0`` the log-prob of each prompt token. So the vLLM path's
probabilities can be held to the transformers path's (1e-5, float32) on the Llama-3 template.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import build_tiny_judge  # noqa: E402
from real_models import llama3_tokenizer, tiny_causal_lm  # noqa: E402

from linepo.errors import InputError  # noqa: E402
from linepo.stages.judges import make_judge  # noqa: E402
from linepo.stages.judges.pairwise import PairwiseLMJudge  # noqa: E402
from linepo.stages.judges.vllm_judge import TOP_LOGPROBS, VLLMPairwiseJudge  # noqa: E402

WORDS = "the moon pulls water toward it so oceans bulge and tides rise twice a day".split()


class Logprob:  # vllm.sequence.Logprob
    def __init__(self, logprob: float):
        self.logprob = logprob


class TopK:
    """vLLM's ``{token id: Logprob}`` of the top K tokens (and the generated one), read lazily:
    a dict of K = 10⁶ entries per sequence would be slow to build and say nothing more."""

    def __init__(self, logp, k: int):
        self.logp, self.generated = logp, int(logp.argmax())
        self.kth = float(logp.topk(min(k, logp.numel())).values[-1])

    def __contains__(self, token) -> bool:
        return token == self.generated or float(self.logp[token]) >= self.kth

    def __getitem__(self, token) -> Logprob:
        if token not in self:
            raise KeyError(token)
        return Logprob(float(self.logp[token]))


class FakeVLLM:
    """A stand-in ``vllm`` module (``LLM``, ``SamplingParams``) running ``model``, or the folder it is given."""

    def __init__(self, model=None):
        self.model, self.engines, self.requests = model, [], []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                fake.engines.append(kwargs)
                if fake.model is None:
                    from linepo.stages.models import load_policy

                    fake.model = load_policy(kwargs["model"], device="cpu", dtype="float32")[0]

            def generate(self, prompts, params, use_tqdm=True):
                ids = [list(p["prompt_token_ids"]) for p in prompts]
                fake.requests.append((ids, params.kwargs))
                return [fake.answer(seq, params.kwargs) for seq in ids]

        self.LLM, self.SamplingParams = LLM, SamplingParams

    def answer(self, ids: list[int], params: dict):
        import torch

        assert params["max_tokens"] == 1 and params["temperature"] == 0.0
        with torch.inference_mode():  # positions -2 (scores the last prompt token) and -1 (the next token)
            logp = torch.log_softmax(self.model(input_ids=torch.tensor([ids]), logits_to_keep=2).logits[0].float(), -1)
        top = TopK(logp[-1], params["logprobs"]) if params.get("logprobs") is not None else None
        prompt = None
        if params.get("prompt_logprobs") is not None:
            assert params["prompt_logprobs"] == 0
            # vLLM scores every prompt position; the judge reads the last, the appended choice.
            prompt = [None] * (len(ids) - 1) + [{ids[-1]: Logprob(float(logp[-2, ids[-1]]))}]
        completion = types.SimpleNamespace(token_ids=[int(logp[-1].argmax())], logprobs=None if top is None else [top])
        return types.SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=prompt, outputs=[completion])


@pytest.fixture(scope="module")
def model():
    # A wide initialisation makes p(a) depend on the content, so a wrong row would show.
    return tiny_causal_lm(llama3_tokenizer(), "llama", seed=1, tie=False, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, initializer_range=0.2)


def _judges(monkeypatch, model, **kwargs):
    """(vLLM-backend judge on a stand-in running ``model``, transformers judge on ``model``, the stand-in)."""
    fake = FakeVLLM(model)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    common = dict(min_answer_mass=0.0, **kwargs)
    return (VLLMPairwiseJudge(fake.LLM(model="judge"), llama3_tokenizer(), **common),
            PairwiseLMJudge(model, llama3_tokenizer(), device="cpu", share_prefixes=False, **common), fake)


def _pairs(seed=0, n=4, prompts=("Explain tides.", "Why is the sky blue?")):
    rng = np.random.default_rng(seed)
    samples = {q: [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 40)))) for _ in range(n)] for q in prompts}
    rows = [(q, rs[i], rs[j]) for q, rs in samples.items() for i in range(n) for j in range(n) if i != j]
    rows.append((prompts[0], "same", "same"))  # identical texts: ½, no request
    return [list(col) for col in zip(*rows)]


def _triples(prompts, a, b):
    return sorted({(q, *pair) for q, x, y in zip(prompts, a, b) if x != y for pair in ((x, y), (y, x))})


@pytest.mark.parametrize("k", [TOP_LOGPROBS, 60_000, 10**6])  # choices: mostly outside, a mix, always inside
def test_vllm_probabilities_equal_the_transformers_path_on_the_same_token_ids(model, k, monkeypatch):
    vllm_judge, plain, fake = _judges(monkeypatch, model)
    vllm_judge.top_logprobs = k
    prompts, a, b = _pairs()
    p_vllm, failed_vllm = vllm_judge.probabilities(prompts, a, b)
    p_plain, failed_plain = plain.probabilities(prompts, a, b)
    assert not failed_vllm.any() and not failed_plain.any() and p_vllm[-1] == 0.5
    np.testing.assert_allclose(p_vllm, p_plain, rtol=0, atol=1e-5)
    assert np.std(p_plain) > 0.05  # the content matters: a wrong row would show
    # One request per judged sequence, exactly the transformers path's token ids (sorted: prefixes adjacent).
    sequences = plain._sequences(_triples(prompts, a, b))
    (submitted, params), *fallback = fake.requests
    assert submitted == sorted(sequences) and len(submitted) == 24
    assert params == {"max_tokens": 1, "temperature": 0.0, "logprobs": k, "detokenize": False}
    # Choices outside the top K: scored by prompt_logprobs on the sequence + that choice, once each.
    extended = {tuple(s + [c]) for s in sequences for c in vllm_judge.choice_ids}
    if k >= len(llama3_tokenizer()):
        assert fallback == [] and vllm_judge.fallbacks == 0
    else:
        [(exact, exact_params)] = fallback
        assert exact_params == {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "detokenize": False}
        assert {tuple(s) for s in exact} <= extended and len(set(map(tuple, exact))) == len(exact)
        assert len(exact) == vllm_judge.fallbacks and (len(exact) > 40 if k == TOP_LOGPROBS else 0 < len(exact) < 48)


def test_truncation_and_failures_are_the_transformers_paths(model, monkeypatch):
    base = PairwiseLMJudge(model, llama3_tokenizer(), device="cpu").overhead
    prompts, a, b = _pairs(seed=1, n=3)
    a[1] = "tides " * 200  # cut in the responses
    prompts[2] = "Why " * 300 + "?"  # cut in the instruction too
    vllm_judge, plain, fake = _judges(monkeypatch, model, max_length=base + 70)
    triples = _triples(prompts, a, b)
    assert fake.requests == [] and sorted(vllm_judge._sequences(triples)) == sorted(plain._sequences(triples))
    plain._first_choice_probs(plain._sequences(triples))
    for judge in (vllm_judge, plain):  # a threshold between the answer masses fails some comparisons
        judge.min_answer_mass = float(np.nanmedian(plain._masses))
    p_vllm, failed_vllm = vllm_judge.probabilities(prompts, a, b)
    p_plain, failed_plain = plain.probabilities(prompts, a, b)
    assert failed_vllm.any() and not failed_vllm.all() and failed_vllm.tolist() == failed_plain.tolist()
    assert vllm_judge.last_reasons == plain.last_reasons and vllm_judge.failures == plain.failures
    assert vllm_judge.failure_summary() == plain.failure_summary()
    np.testing.assert_allclose(p_vllm[~failed_vllm], p_plain[~failed_plain], rtol=0, atol=1e-5)
    # Too long even cut: fails as too long, never submitted; identical texts are ½ all the same.
    tight, _, fake = _judges(monkeypatch, model, max_length=base - 1)
    prob, failed = tight.probabilities(["Q", "Q"], ["x", "same"], ["y", "same"])
    assert failed.tolist() == [True, False] and tight.last_reasons[0].startswith("too long") and prob[1] == 0.5
    assert fake.requests == []


def test_the_config_builds_a_prefix_caching_engine_and_records_the_backend(tmp_path, monkeypatch):
    from linepo.schemas import read_metadata, write_table
    from linepo.stages.preferences import judge_samples

    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    path = build_tiny_judge(tmp_path / "judge")
    config = {"type": "pairwise_lm", "model": path, "min_answer_mass": 0.0, "backend": "vllm", "dtype": "float32"}
    judge = make_judge(config)
    assert isinstance(judge, VLLMPairwiseJudge)
    assert fake.engines == [{"model": path, "tokenizer": path, "enable_prefix_caching": True, "dtype": "float32",
                             "seed": 0, "tensor_parallel_size": 1, "trust_remote_code": False,
                             "load_format": "safetensors"}]
    plain = make_judge({**config, "backend": "transformers", "device": "cpu"})
    prompts, a, b = ["Say hi."] * 3, ["Hi!", "Sure, here it is.", "Briefly, hi."], ["Hello there.", "Hi!", "Hi!"]
    np.testing.assert_allclose(judge.probabilities(prompts, a, b)[0], plain.probabilities(prompts, a, b)[0],
                               rtol=0, atol=1e-5)
    assert judge.describe() == {**plain.describe(), "backend": "vllm"} and plain.describe()["backend"] == "transformers"
    make_judge({k: v for k, v in config.items() if k != "dtype"} | {"allow_pickle_weights": True})
    assert fake.engines[-1]["dtype"] == "bfloat16" and fake.engines[-1]["load_format"] == "auto"
    # The judgments file says which backend judged.
    rows = [{"prompt_id": "p0", "prompt": "Q?", "sample_index": k, "response": text, "response_token_ids": None,
             "num_tokens": 2, "finish_reason": "stop", "stop_token_id": None, "sampler_settings": "{}"}
            for k, text in enumerate(["Red.", "Blue."])]
    write_table(rows, tmp_path / "s.parquet", "samples")
    judge_samples(tmp_path / "s.parquet", config, tmp_path / "j.parquet")
    metadata = read_metadata(tmp_path / "j.parquet")
    assert metadata["judge"]["backend"] == "vllm" and metadata["judge_facts"]["backend"] == "vllm"
    # Keys the engine does not read, and values that are no backend, are refused by name.
    with pytest.raises(InputError, match=r"^judge config key device: backend vllm places the model itself"):
        make_judge({**config, "device": "cuda:1"})
    with pytest.raises(InputError, match="key backend"):
        make_judge({**config, "backend": "tpu"})
    with pytest.raises(InputError, match="key backend: PairwiseLMJudge runs backend transformers"):
        PairwiseLMJudge.from_config(config, "judge config")


def test_backend_vllm_without_vllm_is_one_line_naming_the_key(tmp_path, monkeypatch):
    import yaml

    from linepo.workflow.config import validate_config
    from linepo.workflow.preflight import SKIP_ENV, check_environment
    from workflow_utils import REPO

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm: ImportError
    path = build_tiny_judge(tmp_path / "judge")
    with pytest.raises(InputError) as err:
        make_judge({"type": "pairwise_lm", "model": path, "backend": "vllm"})
    assert str(err.value) == ("judge config key backend: backend vllm needs the optional extra linepo[vllm] "
                              "(pip install 'linepo[vllm]')")
    # At plan time, before any job: the training judge's key, and the eval judge's.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    monkeypatch.delenv(SKIP_ENV, raising=False)
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    lm_judge = {"type": "pairwise_lm", "model": path, "min_answer_mass": 0.0}
    for key, judge, eval_judge in [("judge.backend", {**lm_judge, "backend": "vllm"}, None),
                                   ("evaluation.judge.backend", lm_judge, {**lm_judge, "backend": "vllm"})]:
        config = copy.deepcopy(base)
        config["judge"], config["evaluation"]["judge"] = judge, eval_judge
        with pytest.raises(InputError) as err:
            check_environment(validate_config(config))
        assert str(err.value) == (f"config key {key}: vllm is not installed here (pip install 'linepo[vllm]'), "
                                  f"or plan for another machine with {SKIP_ENV}=1")


def test_the_backend_is_listed_and_part_of_node_ids(tmp_path):
    """Another kernel rounds differently: switching the backend re-judges (unlike share_prefixes)."""
    import yaml

    from linepo.commands.judge import judge_config_keys
    from linepo.workflow.config import validate_config
    from linepo.workflow.wiring import Wiring
    from workflow_utils import REPO

    assert "backend (" in judge_config_keys(["pairwise_lm"]) and "vllm" in judge_config_keys(["pairwise_lm"])
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    base["judge"] = {"type": "pairwise_lm", "model": build_tiny_judge(tmp_path / "judge"), "min_answer_mass": 0.0}
    switched = copy.deepcopy(base)
    switched["judge"]["backend"] = "vllm"
    plain, vllm = Wiring(validate_config(copy.deepcopy(base))), Wiring(validate_config(switched))
    assert not set(vllm.plan.prefs) & set(plain.plan.prefs)
    assert json.loads(vllm.judge_spec)["backend"] == "vllm" and "backend" not in json.loads(plain.judge_spec)
