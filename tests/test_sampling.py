"""The sampler: schema, n rows per prompt, finish reasons, exactness, determinism, CLI errors.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_sampling.py -q

Most tests use a "unigram" policy: a tiny Qwen2 whose attention and MLP outputs are zero,
so every position has the same next-token distribution, set exactly through lm_head.
That makes finish reasons controllable and sampling frequencies checkable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
import types

import numpy as np
import pytest

from linepo import toy as embedded
from linepo.cli import main
from linepo.errors import InputError
from linepo.schemas import read_table, write_table

torch = pytest.importorskip("torch")

from linepo.stages.models import load_policy, save_policy  # noqa: E402
from linepo.stages.sampling import SamplerSettings, TransformersSampler, make_sampler, row_seed  # noqa: E402



P_STOP = 0.25  # per-step probability of EOS in the unigram policy
HOT = (10, 11, 12, 13, 14)  # non-EOS tokens with high, distinct logits; the rest is a flat tail


def unigram_logits(vocab: int, eos: int) -> torch.Tensor:
    """Logits (V,) of the unigram policy: P(EOS) = P_STOP, then HOT, then a long flat tail."""
    logits = torch.full((vocab,), -4.0)
    logits[list(HOT)] = torch.tensor([2.0, 1.8, 1.6, 1.4, 1.2])
    others = logits.clone()
    others[eos] = -math.inf
    logits[eos] = math.log(P_STOP / (1 - P_STOP)) + torch.logsumexp(others, 0)
    return logits


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask (V,) of the tokens that top-p keeps (the smallest set with mass >= top_p)."""
    ascending, order = probs.sort()
    removed = ascending.cumsum(0) <= 1 - top_p
    kept = torch.ones_like(probs, dtype=torch.bool)
    kept[order[removed]] = False
    return kept


@pytest.fixture(scope="module")
def unigram(tmp_path_factory):
    """Folder of a policy whose next-token distribution is softmax(unigram_logits) everywhere."""
    from real_models import fixed_distribution_lm

    path = tmp_path_factory.mktemp("policy") / "unigram"
    _, tokenizer = embedded.build_random(path)
    model = fixed_distribution_lm(tokenizer, unigram_logits(len(tokenizer), tokenizer.eos_token_id))
    model.generation_config = embedded.init_model(tokenizer).generation_config
    save_policy(model.eval(), tokenizer, path)
    return path


@pytest.fixture(scope="module")
def loaded(unigram):
    return load_policy(unigram, device="cpu")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.parquet"
    write_table(embedded.prompt_rows("eval", 6), path, "prompts")
    return path


PROMPTS = [{"prompt_id": f"p{i}", "prompt": p} for i, p in enumerate(embedded.prompts("eval", 5))]


def test_rows_schema_order_and_finish_reasons(loaded, tmp_path):
    model, tokenizer = loaded
    sampler = TransformersSampler(model, tokenizer, SamplerSettings(n=4, temperature=1.0, max_new_tokens=6, seed=1, batch_size=3))
    rows = sampler.generate(PROMPTS)
    table = read_table(write_table(rows, tmp_path / "samples.parquet", "samples"), "samples")
    assert table.num_rows == 20
    expected_order = [(p["prompt_id"], k) for p in PROMPTS for k in range(4)]
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == expected_order
    assert {r["prompt"] for r in rows} == {p["prompt"] for p in PROMPTS}
    assert json.loads(rows[0]["sampler_settings"])["n"] == 4
    reasons = {r["finish_reason"] for r in rows}
    assert reasons == {"stop", "length"}, "P(stop within 6 tokens) = 82%: 20 rows show both"
    for r in rows:
        if r["finish_reason"] == "length":
            assert r["num_tokens"] == 6
        else:
            assert 1 <= r["num_tokens"] <= 6
        assert embedded.END not in r["response"], "special tokens are removed from the text"


def test_num_tokens_follow_geometric_stop(loaded):
    model, tokenizer = loaded
    sampler = TransformersSampler(model, tokenizer, SamplerSettings(n=200, temperature=1.0, max_new_tokens=40, batch_size=200))
    rows = sampler.generate(PROMPTS[:2])
    lengths = np.array([r["num_tokens"] for r in rows])
    assert all(r["finish_reason"] == "stop" for r in rows if r["num_tokens"] < 40)
    assert abs(lengths.mean() - 1 / P_STOP) < 0.6  # geometric(P_STOP) has mean 4, sd/sqrt(400)=0.17


def test_sampling_is_exact_for_temperature_and_top_p(loaded):
    model, tokenizer = loaded
    eos = tokenizer.eos_token_id
    logits = unigram_logits(len(tokenizer), eos).double()
    prompts = [{"prompt_id": f"q{i}", "prompt": "x"} for i in range(40)]
    for temperature, top_p in [(1.0, 1.0), (0.5, 1.0), (1.0, 0.6)]:
        settings = SamplerSettings(n=50, max_new_tokens=1, temperature=temperature, top_p=top_p, batch_size=500)
        rows = TransformersSampler(model, tokenizer, settings).generate(prompts)
        assert len(rows) == 2000
        probs = torch.softmax(logits / temperature, 0)
        kept = nucleus(probs, top_p)
        probs = torch.where(kept, probs, 0.0) / probs[kept].sum()
        kept_ids = torch.nonzero(kept).flatten().tolist()
        allowed = {tokenizer.decode([t], skip_special_tokens=True) for t in kept_ids if t != eos}
        assert {r["response"] for r in rows if r["finish_reason"] == "length"} <= allowed
        for token, frequency in [(eos, np.mean([r["finish_reason"] == "stop" for r in rows])),
                                 (HOT[0], np.mean([r["response"] == tokenizer.decode([HOT[0]]) for r in rows]))]:
            p = probs[token].item()
            assert abs(frequency - p) < 4 * math.sqrt(p * (1 - p) / 2000), (temperature, top_p, token, frequency, p)
    assert kept.sum() < 6, "top_p=0.6 must cut tokens for the test to mean anything"


def test_greedy_samples_are_identical(loaded):
    model, tokenizer = loaded
    sampler = TransformersSampler(model, tokenizer, SamplerSettings(n=3, temperature=0, max_new_tokens=5))
    rows = sampler.generate(PROMPTS[:2])
    assert len({(r["response"], r["num_tokens"]) for r in rows}) == 1


def test_results_do_not_depend_on_batching(loaded):
    model, tokenizer = loaded
    def run(prompts, **overrides):
        settings = SamplerSettings(**{"n": 3, "temperature": 1.0, "max_new_tokens": 8, "seed": 7, **overrides})
        rows = TransformersSampler(model, tokenizer, settings).generate(prompts)
        return [(r["prompt_id"], r["sample_index"], r["response"], r["num_tokens"]) for r in rows]

    big = run(PROMPTS)
    assert run(PROMPTS, batch_size=2) == big
    assert run(PROMPTS[3:4]) == big[9:12]
    assert run(PROMPTS[::-1]) == [row for p in reversed(range(5)) for row in big[3 * p : 3 * p + 3]]
    assert run(PROMPTS, seed=8) != big


def test_generate_rejects_bad_prompts(loaded):
    sampler = TransformersSampler(*loaded)
    with pytest.raises(InputError, match="appears more than once"):
        sampler.generate([{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "a", "prompt": "y"}])
    with pytest.raises(InputError, match="row 0"):
        sampler.generate([{"prompt": "x"}])
    with pytest.raises(InputError, match="^--n:"):
        sampler.generate(PROMPTS, n=0)


def test_row_seed_depends_on_ids_only():
    assert row_seed(0, "a", 1) == row_seed(0, "a", 1)
    assert len({row_seed(0, "a", 1), row_seed(1, "a", 1), row_seed(0, "b", 1), row_seed(0, "a", 2)}) == 4
    assert 0 <= row_seed(5, "x") < 2**63


# ----------------------------------------------------------------------------- CLI


def _sample(policy, prompts, out, *extra):
    return main(
        ["sample", "--policy", str(policy), "--prompts", str(prompts), "--out", str(out),
         "--n", "3", "--temperature", "0.8", "--max-new-tokens", "8", "--seed", "0", *extra]
    )


def test_cli_sample_is_byte_identical_across_runs(unigram, prompts_file, tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert _sample(unigram, prompts_file, a) == 0
    assert _sample(unigram, prompts_file, b, "--batch-size", "64") == 0  # the default, spelt out
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b)
    table = read_table(a, "samples")
    assert table.num_rows == 18
    assert table.column("prompt_id").to_pylist() == [
        pid for pid in read_table(prompts_file, "prompts").column("prompt_id").to_pylist() for _ in range(3)
    ]


@pytest.mark.parametrize(
    "case, flag_or_message",
    [
        ("missing policy", "policy folder not found"),
        ("missing prompts", "file not found"),
        ("corrupt prompts", "not a readable parquet file"),
        ("wrong kind", "missing column"),
        ("n=0", "--n:"),
        ("negative temperature", "--temperature:"),
        ("top-p 0", "--top-p:"),
        ("vllm", "linepo[vllm]"),
    ],
)
def test_cli_sample_bad_input_exits_2_and_writes_nothing(
    case, flag_or_message, unigram, prompts_file, tmp_path, capsys
):
    if case == "vllm" and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    policy, prompts, extra = unigram, prompts_file, []
    if case == "missing policy":
        policy = tmp_path / "no-policy"
    elif case == "missing prompts":
        prompts = tmp_path / "no-prompts.parquet"
    elif case == "corrupt prompts":
        prompts = tmp_path / "corrupt.parquet"
        prompts.write_bytes(b"PAR1 this is not parquet")
    elif case == "wrong kind":
        prompts = tmp_path / "samples.parquet"
        write_table([], prompts, "samples")
    else:
        extra = {
            "n=0": ["--n", "0"],
            "negative temperature": ["--temperature", "-0.5"],
            "top-p 0": ["--top-p", "0"],
            "vllm": ["--backend", "vllm"],
        }[case]
    out = tmp_path / "out" / "samples.parquet"
    assert _sample(policy, prompts, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("linepo sample: error: ") and flag_or_message in err[-1]
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


# ----------------------------------------------------------------------------- vllm mapping


def test_vllm_backend_maps_settings(unigram, monkeypatch):
    """vLLM is not installed here: a stand-in module records what the sampler asks of it."""
    calls = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def get_tokenizer(self):
            return load_policy(unigram, device="cpu")[1]

        def generate(self, inputs, params, use_tqdm=True):
            calls["inputs"], calls["params"] = inputs, params
            eos = calls["eos"]
            completion = lambda k: types.SimpleNamespace(  # noqa: E731  (vLLM keeps the stop token last)
                text=f"Sure, {k}", token_ids=[1] * k + [eos] if k else [1], finish_reason="stop" if k else "length"
            )
            return [types.SimpleNamespace(outputs=[completion(k) for k in range(p.kwargs["n"])]) for p in params]

    calls["eos"] = load_policy(unigram, device="cpu")[1].eos_token_id
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    settings = SamplerSettings(
        n=2, temperature=0.7, top_p=0.9, max_new_tokens=33, seed=5, backend="vllm", tensor_parallel_size=2
    )
    sampler = make_sampler(unigram, settings, dtype="bfloat16")
    rows = sampler.generate(PROMPTS[:3])
    assert calls["llm"]["tensor_parallel_size"] == 2 and calls["llm"]["seed"] == 5
    assert calls["llm"]["model"] == str(unigram) and calls["llm"]["dtype"] == "bfloat16"
    expected = [
        {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 33, "seed": row_seed(5, p["prompt_id"]),
         "stop_token_ids": [calls["eos"]]}  # no chat template: the stop tokens are the EOS alone
        for p in PROMPTS[:3]
    ]
    assert [p.kwargs for p in calls["params"]] == expected
    assert calls["inputs"][0]["prompt_token_ids"][-1] == sampler.tokenizer.convert_tokens_to_ids(embedded.ASSISTANT)
    first_two = [(r["sample_index"], r["num_tokens"], r["finish_reason"], r["stop_token_id"]) for r in rows[:2]]
    assert first_two == [(0, 1, "length", None), (1, 2, "stop", calls["eos"])]
    assert json.loads(rows[0]["sampler_settings"])["backend"] == "vllm"
