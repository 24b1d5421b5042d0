"""The synthetic intransitive oracle: a preference matrix over response categories.

Each response falls in a category by an observable feature (its first word, or its length)
and P(a ≻ b) is read off a preference matrix over the categories. The default is the
paper's 3×3 game (§4) over three answer styles told apart by their first word — brief
("Briefly"), plain ("Sure"), detailed ("Certainly") = a, b, c — which the embedded toy
world (linepo.toy) is built to be judged by. Pure numpy: no torch import.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from linepo.errors import InputError
from linepo.games.game import InvalidGameError, PAPER_MATRIX, duality_gap, nash_policy, validate_policy
from linepo.games.game import validate_preference_matrix
from linepo.settings import setting
from linepo.stages.judges.base import Judge, read_settings

#: The default oracle's categories, in the order of PAPER_MATRIX's rows (a, b, c).
DEFAULT_CATEGORIES = ("brief", "plain", "detailed")
#: The default oracle's first words: the word that opens each category's answers.
DEFAULT_FIRST_WORDS = {"Briefly": "brief", "Sure": "plain", "Certainly": "detailed"}
UNMATCHED = "unmatched"

DEFAULT_JUDGE_CONFIG = {
    "type": "synthetic",
    "rule": "first_word",
    "categories": list(DEFAULT_CATEGORIES),
    "matrix": PAPER_MATRIX.tolist(),
    "first_words": dict(DEFAULT_FIRST_WORDS),
}


@dataclass(frozen=True)
class SyntheticSettings:
    """The keys of a ``type: synthetic`` judge config."""

    rule: str = setting("first_word", "what decides a response's category: its first word or its length",
                        choices=("first_word", "length"))
    categories: list = setting(list(DEFAULT_CATEGORIES), "category names, in the order of the matrix's rows")
    matrix: list | None = setting(None, "P[i][j] = P(category i ≻ category j); default the paper's 3×3 game")
    first_words: dict | None = setting(None, "rule first_word: word → category (default Briefly, Sure, Certainly)")
    case_sensitive: bool = setting(True, "rule first_word: compare first words case-sensitively")
    length_unit: str = setting("words", "rule length: count words or tokens", choices=("words", "tokens"))
    length_thresholds: list | None = setting(None, "rule length: k − 1 increasing count thresholds")


_WORD = re.compile(r"\w+|[^\w\s]")
# ASCII punctuation plus the common typographic quotes and dashes.
_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019\u2014\u2013\u2026\u00ab\u00bb"


class SyntheticJudge(Judge):
    """P(a ≻ b) = M[category(a), category(b)] for a preference matrix M over categories.

    Categories come from an observable feature of the response:

    - ``first_word``: the first whitespace-separated word, punctuation stripped from both
      ends ("Briefly," → "Briefly"), looked up in ``first_words`` (case-sensitive unless
      ``case_sensitive`` is false);
    - ``length``: the word count (``length_unit: words``, whitespace-separated) or a
      tokenizer-free token count (``tokens``: runs of word characters and single
      punctuation marks), bucketed by ``length_thresholds`` t_1 < … < t_{k−1}: category i
      holds counts with exactly i thresholds ≤ count.

    A response matching no category (an unknown first word; an empty response under either
    rule) falls in an extra ``unmatched`` category that loses to every category with
    probability 1 and ties itself (0.5): the augmented game keeps the same Nash policy, with
    zero mass on ``unmatched``. The synthetic judge never fails a comparison.
    """

    name = "synthetic"

    def __init__(
        self,
        categories=DEFAULT_CATEGORIES,
        matrix=PAPER_MATRIX,
        *,
        rule: str = "first_word",
        first_words: dict | None = None,
        case_sensitive: bool = True,
        length_unit: str = "words",
        length_thresholds=None,
    ):
        self.categories = tuple(categories)
        self.matrix = validate_preference_matrix(matrix)
        k = len(self.categories)
        if self.matrix.shape != (k, k):
            raise ValueError(f"matrix is {self.matrix.shape[0]}×{self.matrix.shape[0]} but there are {k} categories")
        self.rule = rule
        self.case_sensitive = case_sensitive
        words = DEFAULT_FIRST_WORDS if first_words is None else first_words
        index = {c: i for i, c in enumerate(self.categories)}
        self.first_words = {(w if case_sensitive else w.lower()): index[c] for w, c in words.items()}
        self.length_unit = length_unit
        self.length_thresholds = None if length_thresholds is None else np.asarray(length_thresholds, dtype=float)
        # Augmented game: row/column k is "unmatched", beaten by everything with probability 1.
        augmented = np.full((k + 1, k + 1), 1.0)
        augmented[:k, :k] = self.matrix
        augmented[k, :] = 0.0
        augmented[k, k] = 0.5
        self.augmented_matrix = augmented

    @classmethod
    def from_config(cls, config: dict, source: str) -> SyntheticJudge:
        s = read_settings(SyntheticSettings, config, source)

        def error(key: str, problem: str) -> InputError:
            return InputError(f"{source} key {key}: {problem}")

        categories = s.categories
        if len(categories) < 2 or not all(isinstance(c, str) and c for c in categories):
            raise error("categories", f"must be a list of at least 2 non-empty names, got {categories!r}")
        if len(set(categories)) != len(categories) or UNMATCHED in categories:
            raise error("categories", f"names must be distinct and not {UNMATCHED!r}")
        matrix = s.matrix if s.matrix is not None else (PAPER_MATRIX.tolist() if len(categories) == 3 else None)
        if matrix is None:
            raise error("matrix", f"needed: the default matrix is 3×3 but there are {len(categories)} categories")
        try:
            matrix = validate_preference_matrix(matrix)
        except InvalidGameError as err:
            raise error("matrix", f"not a preference matrix: {err}") from err
        if matrix.shape[0] != len(categories):
            n = matrix.shape[0]
            raise error("matrix", f"is {n}×{n} but there are {len(categories)} categories")
        first_words = None
        if s.rule == "first_word":
            if "length_thresholds" in config:
                raise error("length_thresholds", "only for rule: length")
            first_words = s.first_words if s.first_words is not None else dict(DEFAULT_FIRST_WORDS)
            if not first_words:
                raise error("first_words", f"must be a non-empty mapping word → category, got {first_words!r}")
            seen = {}
            for word, category in first_words.items():
                if category not in categories:
                    raise error(f"first_words.{word}", f"category {category!r} is not one of {categories}")
                if not word or word.strip(_PUNCTUATION) != word or len(word.split()) != 1:
                    raise error(f"first_words.{word}", "must be one word without surrounding punctuation")
                folded = word if s.case_sensitive else word.lower()
                if folded in seen and seen[folded] != category:
                    raise error(f"first_words.{word}", "maps to two categories once case is ignored")
                seen[folded] = category
        else:
            if "first_words" in config:
                raise error("first_words", "only for rule: first_word")
            k, thresholds = len(categories), s.length_thresholds
            if (not isinstance(thresholds, list) or len(thresholds) != k - 1
                    or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds)
                    or any(b <= a for a, b in zip(thresholds, thresholds[1:]))):
                raise error("length_thresholds",
                            f"must be {k - 1} increasing numbers (one fewer than the categories), got {thresholds!r}")
        return cls(categories, matrix, rule=s.rule, first_words=first_words, case_sensitive=s.case_sensitive,
                   length_unit=s.length_unit, length_thresholds=s.length_thresholds if s.rule == "length" else None)

    @property
    def unmatched(self) -> int:
        """The index of the ``unmatched`` category: ``len(categories)``."""
        return len(self.categories)

    def categorize(self, responses) -> np.ndarray:
        """The category index of each response (``self.unmatched`` where none matches)."""
        return np.fromiter((self._category(r) for r in responses), dtype=np.int64)

    def _category(self, response: str) -> int:
        if self.rule == "first_word":
            words = response.split(maxsplit=1)
            if not words:
                return self.unmatched
            word = words[0].strip(_PUNCTUATION)
            if not self.case_sensitive:
                word = word.lower()
            return self.first_words.get(word, self.unmatched)
        count = len(response.split()) if self.length_unit == "words" else len(_WORD.findall(response))
        if count == 0:
            return self.unmatched
        return int(np.searchsorted(self.length_thresholds, count, side="right"))

    def _probabilities(self, prompts, responses_a, responses_b):
        ca, cb = self.categorize(responses_a), self.categorize(responses_b)
        return self.augmented_matrix[ca, cb], np.zeros(len(ca), dtype=bool)

    def nash(self) -> np.ndarray:
        """The Nash policy over the categories (length k; ``unmatched`` gets none)."""
        return nash_policy(self.matrix)

    def exploitability(self, category_distribution) -> float:
        """Duality gap of a distribution over categories in the augmented game (0 at Nash).

        Accepts k probabilities (no ``unmatched`` mass) or k + 1 (the last is ``unmatched``).

        Raises:
            InvalidGameError: not a probability vector of length k or k + 1.
        """
        dist = np.asarray(list(category_distribution), dtype=float)
        k = len(self.categories)
        if dist.shape == (k,):
            dist = np.append(dist, 0.0)
        dist = validate_policy(dist, k + 1, allow_zeros=True)
        return duality_gap(self.augmented_matrix, dist)

    def category_distribution(self, responses) -> tuple[np.ndarray, np.ndarray]:
        """Monte Carlo estimate of a policy's distribution over categories, from its samples.

        Returns ``(probs, stderr)``, each of length k + 1 (the last is ``unmatched``):
        empirical frequencies and their binomial standard errors √(p(1 − p)/n).

        Raises:
            ValueError: no responses.
        """
        categories = self.categorize(responses)
        if categories.size == 0:
            raise ValueError("category_distribution needs at least one response")
        probs = np.bincount(categories, minlength=self.unmatched + 1) / categories.size
        return probs, np.sqrt(probs * (1.0 - probs) / categories.size)


