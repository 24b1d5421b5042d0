"""The judge protocol, the oracle's coin, and reading a judge config.

Every judge answers ``judge.probabilities(prompts, responses_a, responses_b)`` with
``(prob_a_wins, failed)``: float64 and bool arrays, one entry per comparison. A failed
comparison has ``prob_a_wins = nan``; it is counted by the caller, never replaced by a coin
flip. ``judge.judge(..., seed=s)`` adds the paper's oracle outcome (1 with probability
P(a ≻ b), else 0; −1 where failed), drawn from a uniform that is a hash of (seed, prompt,
a, b): the same comparison always gets the same outcome, whatever the batch and its order,
and the reversed comparison (b, a) gets the complementary outcome.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from linepo.errors import InputError
from linepo.settings import from_mapping


#: the default ``max_failed_fraction``: a few failures (an over-long pair) pass, a judge that
#: fails more is broken or misconfigured
DEFAULT_MAX_FAILED_FRACTION = 0.05
#: keys every judge config may have, read by the factory rather than by a judge type
FACTORY_KEYS = ("type", "seed", "max_failed_fraction")


class JudgeError(RuntimeError):
    """A judge produced something impossible (a probability outside [0, 1]): a bug, not bad input."""


# ----------------------------------------------------------------------------- base


class Judge:
    """The interface: :meth:`probabilities` (subclasses implement ``_probabilities``)."""

    name = "judge"
    #: True for a judge that runs a model: its judgments record the numerics environment (linepo.numerics)
    runs_model = False
    #: comparisons handed over per call by the tournament (progress-bar granularity)
    chunk_size = 100_000
    #: default seed of :meth:`judge` (a config's ``seed`` key)
    seed = 0
    #: the share of failed comparisons above which a judging step fails (a config's
    #: ``max_failed_fraction`` key): a judge that cannot answer must stop the run, not feed it ties
    max_failed_fraction = DEFAULT_MAX_FAILED_FRACTION
    #: why each comparison of the last :meth:`probabilities` call failed (None where it did not)
    last_reasons: list = []

    def failure_summary(self) -> str:
        """One line on why this judge's comparisons failed so far (judges that can fail say more)."""
        return "the judge gave no probability"

    def reset_failures(self) -> None:
        """Forget the failures counted so far: :meth:`failure_summary` then speaks of later
        calls only (one judge, many comparisons: each comparison's summary is its own)."""

    def probabilities(self, prompts, responses_a, responses_b) -> tuple[np.ndarray, np.ndarray]:
        """``(prob_a_wins, failed)`` for each comparison; ``prob_a_wins`` is nan where failed.

        Raises:
            ValueError: the three sequences differ in length.
            JudgeError: the judge returned a probability outside [0, 1] or not finite for a
                comparison it did not mark failed (a bug in the judge, named in the message).
        """
        prompts, responses_a, responses_b = _same_length_lists(prompts, responses_a, responses_b)
        self.last_reasons = [None] * len(prompts)
        if not prompts:
            return np.zeros(0), np.zeros(0, dtype=bool)
        prob, failed = self._probabilities(prompts, responses_a, responses_b)
        prob, failed = _checked(self.name, prob, failed, len(prompts))
        if len(self.last_reasons) != len(prompts):  # a judge that names no reasons
            self.last_reasons = [None] * len(prompts)
        self.last_reasons = [(reason or "failed") if f else None for reason, f in zip(self.last_reasons, failed)]
        return prob, failed

    def judge(self, prompts, responses_a, responses_b, *, seed: int | None = None):
        """``(prob_a_wins, outcome, failed)``: :meth:`probabilities` plus the sampled outcomes."""
        prompts, responses_a, responses_b = _same_length_lists(prompts, responses_a, responses_b)
        prob, failed = self.probabilities(prompts, responses_a, responses_b)
        seed = self.seed if seed is None else seed
        return prob, sample_outcomes(prompts, responses_a, responses_b, prob, failed, seed=seed), failed

    def _probabilities(self, prompts, responses_a, responses_b):  # pragma: no cover - abstract
        raise NotImplementedError


def _same_length_lists(prompts, responses_a, responses_b):
    prompts, responses_a, responses_b = list(prompts), list(responses_a), list(responses_b)
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(
            f"prompts, responses_a and responses_b differ in length: "
            f"{len(prompts)}, {len(responses_a)}, {len(responses_b)}"
        )
    return prompts, responses_a, responses_b


def _checked(name: str, prob, failed, n: int) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob, dtype=np.float64).copy()
    failed = np.asarray(failed, dtype=bool).copy()
    if prob.shape != (n,) or failed.shape != (n,):
        raise JudgeError(f"judge {name!r}: returned shapes {prob.shape}, {failed.shape} for {n} comparisons")
    ok = ~failed
    bad = np.flatnonzero(ok & ~(np.isfinite(prob) & (prob >= 0.0) & (prob <= 1.0)))
    if bad.size:
        i = int(bad[0])
        raise JudgeError(
            f"judge {name!r}: P(a ≻ b) = {prob[i]!r} for comparison {i} is outside [0, 1] "
            f"({bad.size} such comparisons); this is a bug in the judge"
        )
    prob[failed] = np.nan
    return prob, failed


# ----------------------------------------------------------------------------- oracle outcomes


def comparison_uniform(seed: int, prompt: str, first: str, second: str) -> float:
    """A uniform in [0, 1) that is a hash of (seed, prompt, first, second): the oracle's coin."""
    digest = hashlib.blake2b(digest_size=8, person=b"linepo-oracle")
    for part in (str(int(seed)), prompt, first, second):
        data = part.encode("utf-8")
        # Length-prefixed, so ("ab", "c") and ("a", "bc") hash differently.
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return (int.from_bytes(digest.digest(), "little") >> 11) * 2.0**-53


def sample_outcomes(prompts, responses_a, responses_b, prob, failed, *, seed: int) -> np.ndarray:
    """The paper's oracle: 1 with probability P(a ≻ b), else 0; −1 where failed (int8).

    The coin is drawn for the comparison in a canonical order (the smaller text first), so
    (a, b) and (b, a) get complementary outcomes and batch order never matters.
    """
    outcome = np.full(len(prompts), -1, dtype=np.int8)
    for i, (prompt, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
        if failed[i]:
            continue
        if a <= b:
            outcome[i] = comparison_uniform(seed, prompt, a, b) < prob[i]
        else:
            outcome[i] = 1 - (comparison_uniform(seed, prompt, b, a) < 1.0 - prob[i])
    return outcome


# ----------------------------------------------------------------------------- config helpers


def load_judge_config(spec: str, *, option: str = "--judge-config") -> tuple[dict, str]:
    """Parse a judge config given inline as JSON, or as a path to a JSON or YAML file.

    Returns the config and a label for error messages (``"--judge-config judge.yaml"``).

    Raises:
        InputError: the file is missing or does not parse, or the config is not a mapping.
    """
    text = spec.strip()
    if text.startswith("{"):
        label = option
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{option}: not valid inline JSON ({err})") from err
    else:
        path = Path(spec)
        label = f"{option} {path}"
        if not path.is_file():
            raise InputError(f"{option}: file not found: {path}")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at byte {err.start}); "
                             "save it as UTF-8") from None
        try:
            if path.suffix.lower() == ".json":
                config = json.loads(raw)
            else:
                import yaml  # only for YAML configs

                config = yaml.safe_load(raw)
        except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
            raise InputError(f"{path}: not a valid JSON/YAML judge config ({str(err).splitlines()[0]})") from err
    if not isinstance(config, dict):
        raise InputError(f"{label}: a judge config must be a mapping with a 'type' key")
    return config, label


def read_settings(cls, config: dict, source: str):
    """A judge type's settings dataclass from its config (the :data:`FACTORY_KEYS` are the factory's).

    Raises:
        InputError: "<source> key <k>: <problem>" for an unknown key or a bad value.
    """
    values = {k: v for k, v in config.items() if k not in FACTORY_KEYS}
    return from_mapping(cls, values, source=source)


def config_failure_limit(config: dict, source: str) -> float:
    value = config.get("max_failed_fraction", DEFAULT_MAX_FAILED_FRACTION)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InputError(f"{source} key max_failed_fraction: must be a number in [0, 1], got {value!r}")
    return float(value)


def config_seed(config: dict, source: str) -> int:
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"{source} key seed: must be an integer, got {seed!r}")
    return seed
