"""Evaluation estimates what it says: two checkpoints' generations are sampled independently
(each with its own seed), win rates on the synthetic oracle match their exact values from
the category mixes, and Monte-Carlo exploitability estimates the exact path's per-prompt
quantity.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_eval_independence.py

Policies here are "fixed-distribution" tiny Qwen2 models (tests/real_models.py): every
position has the same next-token distribution; with ``max_new_tokens=1`` a response is one
token drawn from it.
"""

from __future__ import annotations

import copy
import math
import re
import zlib

import numpy as np
import pyarrow as pa
import pytest
import yaml

from linepo import toy as embedded
from linepo.evaluation import winrates as ev
from linepo.workflow.config import validate_config
from linepo.workflow.evalplan import EvalPlan, build_eval_plan
from linepo.stages.judges import SyntheticJudge
from linepo.workflow.plan import build_plan
from workflow_utils import REPO, planned_jobs, snakemake, tiny_config, workflow_with_config

torch = pytest.importorskip("torch")

from real_models import fixed_distribution_lm  # noqa: E402

from linepo.stages.sampling import SamplerSettings, TransformersSampler  # noqa: E402

ROWS = (40, 25)  # prompts × samples per prompt: 1000 comparison rows


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    _, tok = embedded.build_random(tmp_path_factory.mktemp("policy") / "random")
    return tok


def fixed_policy(tokenizer, probs: dict[int, float]):
    """A model whose next-token distribution is ``probs`` (token id → p) everywhere; every
    other token (EOS included) gets e^-30 relative to the largest."""
    model = fixed_distribution_lm(tokenizer, {token: math.log(p) for token, p in probs.items()})
    model.generation_config = embedded.init_model(tokenizer).generation_config
    return model.eval()


def sample(model, tokenizer, seed: int) -> dict:
    """One token per row: ``{(prompt_id, sample_index): samples row}`` over :data:`ROWS`."""
    prompts = [{"prompt_id": f"p{i:03d}", "prompt": p} for i, p in enumerate(embedded.prompts("eval", ROWS[0]))]
    settings = SamplerSettings(n=ROWS[1], temperature=1.0, max_new_tokens=1, seed=seed, batch_size=250)
    rows = TransformersSampler(model, tokenizer, settings).generate(prompts)
    return {(r["prompt_id"], r["sample_index"]): r for r in rows}


def default_plan() -> EvalPlan:
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    return build_eval_plan(config, build_plan(config))


def two_generation_seeds() -> tuple[int, int]:
    eplan = default_plan()
    a, b = eplan.checkpoint("sft").generation, eplan.checkpoint("linepo").generation
    return eplan.generation_seed(a), eplan.generation_seed(b)


# ----------------------------------------------------------------------------- independence


def test_two_generations_first_tokens_are_independent(tokenizer):
    """P(both rows start with the same token) = Σ_t p_A(t) p_B(t) with the plan's seeds; one
    seed for both (the old rule) couples their Gumbel noise and makes it far larger."""
    hot = [t for t in range(10, 15)]
    texts = [tokenizer.decode([t], skip_special_tokens=True) for t in hot]
    assert len(set(texts)) == len(hot) and all(texts)  # a response names its token
    weights = np.exp([2.0, 1.0, 0.0, -1.0, -2.0])
    p_a = weights / weights.sum()
    p_b = p_a[::-1]
    model_a = fixed_policy(tokenizer, dict(zip(hot, p_a)))
    model_b = fixed_policy(tokenizer, dict(zip(hot, p_b)))
    expected = float(p_a @ p_b)
    n = ROWS[0] * ROWS[1]
    se = math.sqrt(expected * (1 - expected) / n)

    def same_fraction(seed_a, seed_b):
        a, b = sample(model_a, tokenizer, seed_a), sample(model_b, tokenizer, seed_b)
        assert {r["response"] for r in a.values()} <= set(texts)
        return np.mean([a[k]["response"] == b[k]["response"] for k in a])

    seed_a, seed_b = two_generation_seeds()
    assert seed_a != seed_b
    assert abs(same_fraction(seed_a, seed_b) - expected) < 3 * se
    assert same_fraction(0, 0) > expected + 10 * se  # what one --seed for every generation did


def test_soft_and_hard_win_rates_match_the_exact_values_from_the_category_mixes(tokenizer):
    """Through ev.compare and ev.win_rate: soft = p_Aᵀ M p_B, hard = Σ p_A(i) p_B(j) step(M_ij)."""
    judge = SyntheticJudge()
    styles = embedded.style_token_ids(tokenizer)
    token = [styles[c] for c in judge.categories]  # judge's category order: brief, plain, detailed
    p_a, p_b = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.3, 0.6])
    model_a = fixed_policy(tokenizer, dict(zip(token, p_a)))
    model_b = fixed_policy(tokenizer, dict(zip(token, p_b)))
    m = judge.matrix
    exact_soft = float(p_a @ m @ p_b)
    exact_hard = float(p_a @ np.where(m > 0.5, 1.0, np.where(m < 0.5, 0.0, 0.5)) @ p_b)

    def rates(seed_a, seed_b):
        rows = ev.compare(sample(model_a, tokenizer, seed_a), sample(model_b, tokenizer, seed_b), judge)
        return ev.win_rate(pa.Table.from_pylist(rows), a_is_row=True, resamples=500, seed=0)

    result = rates(*two_generation_seeds())
    assert result["prompts"] == ROWS[0] and result["failed"] == 0
    assert abs(result["win_rate"] - exact_soft) < 3 * result["se"]
    assert abs(result["hard_win_rate"] - exact_hard) < 3 * result["hard_se"]
    # One seed for both: the pairs' joint category law is not p_A ⊗ p_B (here 0.55 vs 0.51).
    shared = rates(0, 0)
    assert abs(shared["win_rate"] - exact_soft) > 3 * shared["se"]


def test_every_planned_generation_gets_its_own_seed(tmp_path):
    """The workflow's `linepo sample` commands of eval_generate (snakemake -n -p)."""
    config = tiny_config(runs={"dpo": {"algorithm": "dpo", "eta": 4.0},
                               "inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 2}},
                         evaluation={"checkpoints": {"inpo_r1": {"run": "inpo", "round": 1}},
                                     "decoding": {"n": 2, "seed": 7}})
    workdir = workflow_with_config(tmp_path, config)
    result = snakemake(workdir, "-n", "-p")
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = re.split(r"^(?=rule \w+:$)", result.stdout, flags=re.MULTILINE)[1:]
    seeds = {}
    for block in blocks:
        if not block.startswith("rule eval_generate:"):
            continue
        command = re.search(r"linepo sample .*", block).group(0)
        generation = re.search(r"--out results/eval/generations/([0-9a-f]{12})\.parquet", command).group(1)
        seeds[generation] = int(re.search(r"--seed (\d+)", command).group(1))
    validated = validate_config(copy.deepcopy(config))
    eplan = build_eval_plan(validated, build_plan(validated))
    assert set(seeds) == set(eplan.generations) and len(seeds) == 6  # SFT, DPO, INPO's 4 steps
    assert len(set(seeds.values())) == len(seeds), seeds
    assert [rule for rule, _ in planned_jobs(result.stdout)].count("eval_generate") == len(seeds)


def test_generation_seeds_follow_decoding_seed():
    eplan = default_plan()
    seeds = [eplan.generation_seed(g) for g in eplan.generations]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["evaluation"].setdefault("decoding", {})["seed"] = 1
    config = validate_config(config)
    other = build_eval_plan(config, build_plan(config))
    assert not {other.generation_seed(g) for g in other.generations} & set(seeds)


# ----------------------------------------------------------------------------- exploitability

# Prompts whose policies are near-pure, in the Nash proportions: the mean mix is near Nash
# (its exploitability near 0) while every prompt's policy is far from it.
MIXES = {"brief": (0.9, 0.05, 0.05), "plain": (0.05, 0.9, 0.05), "detailed": (0.05, 0.05, 0.9)}
GROUPS = {"brief": 24, "plain": 18, "detailed": 24}


def exact_per_prompt(judge) -> float:
    from linepo.evaluation.exploitability import exploitability_of

    return float(np.mean([exploitability_of(judge, MIXES[g]) for g, count in GROUPS.items() for _ in range(count)]))


def test_monte_carlo_exploitability_is_the_per_prompt_mean(monkeypatch):
    """Through robustness.report (what `linepo exploitability` calls), sampling stubbed so
    that prompt x answers from its group's mix."""
    from linepo.evaluation import exploitability as robustness

    judge = SyntheticJudge(case_sensitive=False)  # a folded first word: the Monte Carlo path
    words = [embedded.STYLE_FIRST_WORDS[c] for c in judge.categories]
    prompts = [{"prompt_id": f"{g}-{i}", "prompt": f"Question {g} {i}?"}
               for g, count in GROUPS.items() for i in range(count)]

    class Sampler:
        def generate(self, rows, n):
            out = []
            for row in rows:
                rng = np.random.default_rng(zlib.crc32(row["prompt_id"].encode()))
                picks = rng.choice(3, size=n, p=MIXES[row["prompt_id"].split("-")[0]])
                out += [{"prompt_id": row["prompt_id"], "response": f"{words[c]}, answer."} for c in picks]
            return out

    monkeypatch.setattr("linepo.stages.models.load_policy", lambda *a, **k: (torch.nn.Linear(1, 1), None))
    monkeypatch.setattr("linepo.stages.sampling.make_sampler", lambda *a, **k: Sampler())
    result = robustness.report("stub", prompts, judge, samples=400, bootstrap=500)
    exact = exact_per_prompt(judge)
    assert result["method"] == "monte_carlo" and result["num_prompts"] == 66
    assert abs(result["exploitability"] - exact) < result["exploitability_stderr"]
    assert result["exploitability_of_mean_policy"] < 0.05 < exact - 0.2  # another quantity, kept apart
    nash = judge.nash()
    mean = np.array(list(result["category_distribution"].values()))[:3]
    assert np.abs(mean - nash).max() < 0.05


def test_monte_carlo_exploitability_from_categories_and_its_upward_bias():
    from linepo.evaluation.exploitability import monte_carlo_report

    judge = SyntheticJudge()
    rng = np.random.default_rng(0)
    mixes = [MIXES[g] for g, count in GROUPS.items() for _ in range(count)]

    def categories(samples):
        return np.stack([rng.choice(3, size=samples, p=p) for p in mixes])

    many = monte_carlo_report(judge, categories(400), bootstrap=500)
    assert abs(many["exploitability"] - exact_per_prompt(judge)) < many["exploitability_stderr"]
    assert many["samples_per_prompt"] == 400 and many["exploitability_stderr"] > 0
    # A uniform policy (exploitability 1/30 under the paper's matrix) estimated from 4
    # samples per prompt: ≈ 0.16, the upward bias the docstring warns of.
    uniform = np.stack([rng.choice(3, size=4) for _ in range(200)])
    few = monte_carlo_report(judge, uniform, bootstrap=200)
    assert few["exploitability"] > judge.exploitability([1 / 3] * 3) / 2 + 3 * few["exploitability_stderr"]
