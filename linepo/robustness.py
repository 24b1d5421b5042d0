"""Robust alignment under the synthetic oracle: a policy's distribution over the oracle's
response categories and its exploitability.

The Nash policy wins at least 50% against every policy. A policy π's exploitability is how
far a best response beats it: ``max_j P(y_j ≻ π) − ½`` (half the duality gap of a symmetric
game), per prompt, averaged over prompts — 0 exactly at the Nash policy. Because the
synthetic oracle's categories are known, it is computed, not estimated by a judge:

- exactly, when every first word of the oracle is one token of the policy's tokenizer right
  after the prompt: the category mass is the next-token probability of those tokens (the
  embedded policy; exact up to the model continuing a first word into a longer word, which
  its corpus never does);
- otherwise by Monte Carlo over sampled responses (:func:`monte_carlo_report`): the same
  per-prompt quantity from each prompt's sampled category frequencies, with a bootstrap
  standard error over prompts.

Both also report ``exploitability_of_mean_policy``, the exploitability of the
prompt-averaged category mix: a different quantity (it can be near 0 while every prompt's
policy is pure and exploitable), kept under its own name.

    linepo exploitability --policy results/sft/<id>/model --prompts eval.parquet --out sft.json
"""

from __future__ import annotations

import numpy as np

from linepo.errors import InputError


def exact_category_probs(model, tokenizer, prompts, judge, batch_size: int = 64) -> np.ndarray | None:
    """(num_prompts, k+1) category probabilities from the first response token, or None."""
    from linepo.models import first_response_token_ids, first_response_token_probs

    if judge.rule != "first_word" or not judge.case_sensitive:
        return None  # a case-folded first word has many spellings: estimate instead
    token_ids = first_response_token_ids(tokenizer, list(judge.first_words))
    if token_ids is None:
        return None
    k = len(judge.categories)
    probs = first_response_token_probs(model, tokenizer, prompts, batch_size).numpy()  # (N, V)
    per_category = np.zeros((len(prompts), k + 1))
    for word, token in token_ids.items():
        per_category[:, judge.first_words[word]] += probs[:, token]  # first_words: word → category index
    per_category[:, k] = np.clip(1 - per_category[:, :k].sum(axis=1), 0, None)  # unmatched
    return per_category / per_category.sum(axis=1, keepdims=True)


def exploitability_of(judge, distribution) -> float:
    """max_j P(y_j ≻ π) − ½ over the oracle's augmented game (categories + unmatched)."""
    return 0.5 * judge.exploitability(distribution)


def report(policy, prompt_rows, judge, *, samples: int = 8, seed: int = 0, dtype: str = "auto",
           trust_remote_code: bool = False, bootstrap: int = 1000) -> dict:
    """Exploitability (per prompt, averaged over prompts) and category distribution of one
    policy on ``prompt_rows``: exact when possible, else by Monte Carlo with ``samples``
    responses per prompt (:func:`monte_carlo_report`)."""
    from linepo.models import load_policy

    model, tokenizer = load_policy(policy, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()
    prompts = [row["prompt"] for row in prompt_rows]
    exact = exact_category_probs(model, tokenizer, prompts, judge)
    if exact is not None:
        per_prompt = np.array([exploitability_of(judge, p) for p in exact])
        mean = exact.mean(axis=0)
        return _summary(judge, "exact", mean, per_prompt.mean(), stderr=0.0, num_prompts=len(prompts))
    from linepo.sampling import SamplerSettings, make_sampler

    settings = SamplerSettings(n=samples, temperature=1.0, seed=seed).validate()
    sampler = make_sampler(policy, settings, dtype=dtype, trust_remote_code=trust_remote_code)
    rows = sampler.generate(prompt_rows, samples)
    categories = judge.categorize([r["response"] for r in rows]).reshape(len(prompt_rows), samples)
    return monte_carlo_report(judge, categories, bootstrap=bootstrap, seed=seed)


def monte_carlo_report(judge, categories, *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """:func:`report`'s Monte Carlo estimate from sampled categories, (num_prompts, samples).

    ``exploitability`` is the mean over prompts of max_j (M p̂_x)_j − ½, p̂_x prompt x's
    sampled category frequencies: the exact path's estimand. The plug-in max is biased
    upward with few samples per prompt (a max of noisy values; E max ≥ max E), by up to
    O(1/√samples); its standard error (bootstrap over prompts) does not include that bias.
    """
    from linepo.evaluation import bootstrap_se

    categories = np.asarray(categories)
    if categories.ndim != 2 or categories.size == 0:
        raise InputError(f"exploitability: no sampled responses to estimate it from (shape {categories.shape})")
    num_prompts, samples = categories.shape
    freqs = np.stack([np.bincount(c, minlength=judge.unmatched + 1) for c in categories]) / samples  # (N, k+1)
    per_prompt = np.array([exploitability_of(judge, f) for f in freqs])
    stderr = bootstrap_se(per_prompt, bootstrap, seed)  # nan for one prompt
    return _summary(judge, "monte_carlo", freqs.mean(axis=0), per_prompt.mean(), stderr=stderr,
                    num_prompts=num_prompts, samples_per_prompt=samples)


def _summary(judge, method, mean, exploitability, *, stderr, **extra) -> dict:
    names = list(judge.categories) + ["unmatched"]
    return {
        "method": method,
        "exploitability": float(exploitability),
        "exploitability_stderr": stderr,
        "exploitability_of_mean_policy": exploitability_of(judge, mean),
        "category_distribution": dict(zip(names, np.round(mean, 6).tolist())),
        "nash": dict(zip(judge.categories, np.round(judge.nash(), 6).tolist())),
        **extra,
    }
