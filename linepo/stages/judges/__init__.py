"""Judges (preference oracles): P(a ≻ b | prompt) for batches of response pairs.

    linepo judge --samples results/x/samples.parquet --judge-config '{"type": "synthetic"}' \
        --out results/x/judgments.parquet --seed 0

:func:`make_judge` builds a judge from a config dict with ``type``:

- ``synthetic`` (default, pure numpy; :mod:`.synthetic`): each response falls in a category
  by an observable feature and P is read off a preference matrix over the categories;
- ``pairwise_lm`` (:mod:`.pairwise`): a generative pairwise judge in the format of
  Llama-3-OffsetBias-8B (the paper's oracle), read from next-token probabilities, both orders
  (``backend: vllm``: :mod:`.vllm_judge`);
- ``reward_model`` (:mod:`.reward`): a Bradley–Terry reward model, P = σ(r_a − r_b).

Each type's config keys are the fields of its settings dataclass (SyntheticSettings,
PairwiseLMSettings, RewardModelSettings), plus ``type``, the oracle coin's ``seed`` and
``max_failed_fraction`` (default 0.05): a judging step whose share of failed comparisons
is above it fails, naming why, instead of training on what is left.
The protocol and the coin: :mod:`.base`. torch and transformers are imported only when an
LM judge is built, so the synthetic path (and ``linepo --help``) starts fast.
"""

from __future__ import annotations

from linepo.errors import InputError
from linepo.stages.judges.base import (DEFAULT_MAX_FAILED_FRACTION, Judge, JudgeError, comparison_uniform,
                                       config_failure_limit, config_seed, load_judge_config)
from linepo.stages.judges.base import sample_outcomes
from linepo.stages.judges.offsetbias import OFFSETBIAS_ANSWER_PREFIX, OFFSETBIAS_CHOICES, OFFSETBIAS_USER_TEMPLATE
from linepo.stages.judges.synthetic import (DEFAULT_CATEGORIES, DEFAULT_FIRST_WORDS, DEFAULT_JUDGE_CONFIG, UNMATCHED,
                                            SyntheticJudge, SyntheticSettings)

__all__ = [
    "DEFAULT_CATEGORIES", "DEFAULT_FIRST_WORDS", "DEFAULT_JUDGE_CONFIG", "DEFAULT_MAX_FAILED_FRACTION", "JUDGE_TYPES",
    "OFFSETBIAS_ANSWER_PREFIX", "OFFSETBIAS_CHOICES", "OFFSETBIAS_USER_TEMPLATE", "UNMATCHED", "Judge", "JudgeError",
    "SyntheticJudge", "SyntheticSettings", "comparison_uniform", "judge_settings", "load_judge_config", "make_judge", "sample_outcomes",
]


def _pairwise(config: dict, source: str):
    if config.get("backend") == "vllm":  # any other value: the transformers class checks it
        from linepo.stages.judges.vllm_judge import VLLMPairwiseJudge

        return VLLMPairwiseJudge.from_config(config, source)
    from linepo.stages.judges.pairwise import PairwiseLMJudge  # transformers-free until built

    return PairwiseLMJudge.from_config(config, source)


def _reward(config: dict, source: str):
    from linepo.stages.judges.reward import RewardModelJudge

    return RewardModelJudge.from_config(config, source)


JUDGE_TYPES = {"synthetic": SyntheticJudge.from_config, "pairwise_lm": _pairwise, "reward_model": _reward}


def judge_settings(judge_type: str):
    """The settings dataclass of a judge type (its config keys, defaults and docs)."""
    if judge_type == "pairwise_lm":
        from linepo.stages.judges.pairwise import PairwiseLMSettings

        return PairwiseLMSettings
    if judge_type == "reward_model":
        from linepo.stages.judges.reward import RewardModelSettings

        return RewardModelSettings
    return SyntheticSettings


def make_judge(config: dict | None = None, *, source: str = "judge config") -> Judge:
    """Build a judge from a config dict with ``type`` (None: the default synthetic oracle).

    ``source`` labels error messages, e.g. ``"--judge-config judge.yaml"``.

    Raises:
        InputError: unknown type or key, a bad value (named by its key), a matrix that is
            not a preference matrix, or a model that does not exist or does not load.
    """
    if config is None:
        config = DEFAULT_JUDGE_CONFIG
    if not isinstance(config, dict):
        raise InputError(f"{source}: a judge config must be a mapping with a 'type' key")
    judge_type = config.get("type")
    if judge_type not in JUDGE_TYPES:
        raise InputError(f"{source} key type: unknown judge type {judge_type!r}; known: {sorted(JUDGE_TYPES)}")
    seed, limit = config_seed(config, source), config_failure_limit(config, source)
    judge = JUDGE_TYPES[judge_type](config, source)
    judge.seed, judge.max_failed_fraction = seed, limit
    return judge
