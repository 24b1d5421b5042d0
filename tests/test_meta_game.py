"""The checkpoints' meta-game (linepo.evaluation.meta_game) and its columns in evaluation.tsv."""

import numpy as np
import pytest

from linepo.evaluation.meta_game import (max_entropy_nash, meta_game, nash_averaged, pool_exploitability,
                                         symmetrise)
from linepo.evaluation.summary import META_COLUMNS, summary_rows
from linepo.games.game import PAPER_MATRIX, duality_gap, nash_policy

RPS = np.array([[0.5, 0.2, 0.8], [0.8, 0.5, 0.2], [0.2, 0.8, 0.5]])  # rock-paper-scissors-like


def entropy(p):
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def test_rock_paper_scissors_like_pool():
    result = meta_game(RPS)
    np.testing.assert_allclose(result["meta_nash"], [1 / 3] * 3, atol=1e-9)
    np.testing.assert_allclose(result["pool_exploitability"], [0.3] * 3, atol=1e-12)  # each is beaten 80%
    np.testing.assert_allclose(result["nash_averaged"], [0.0] * 3, atol=1e-9)


def test_transitive_pool_is_a_point_mass_on_the_best():
    m = np.array([[0.5, 0.7, 0.9, 0.6], [0.3, 0.5, 0.6, 0.4], [0.1, 0.4, 0.5, 0.2], [0.4, 0.6, 0.8, 0.5]])
    result = meta_game(m)
    np.testing.assert_allclose(result["meta_nash"], [1, 0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(result["pool_exploitability"], [0.0, 0.2, 0.4, 0.1], atol=1e-12)
    np.testing.assert_allclose(result["nash_averaged"], [0.0, -0.2, -0.4, -0.1], atol=1e-9)  # = M[i, best] − ½


def test_the_papers_game():
    result = meta_game(PAPER_MATRIX)
    np.testing.assert_allclose(result["meta_nash"], [4 / 11, 3 / 11, 4 / 11], atol=1e-9)
    np.testing.assert_allclose(result["meta_nash"], nash_policy(PAPER_MATRIX), atol=1e-9)  # the same LP's answer
    np.testing.assert_allclose(result["pool_exploitability"], [0.4, 0.4, 0.3], atol=1e-12)
    np.testing.assert_allclose(result["nash_averaged"], [0.0] * 3, atol=1e-9)  # all three in the support


def test_a_non_unique_nash_gets_the_maximum_entropy_one():
    """Rock-paper-scissors with rock cloned: every (r, r', ⅓, ⅓) with r + r' = ⅓ is a Nash policy;
    the LP returns a vertex, the maximum-entropy one splits rock's third between the clones, and
    the Nash-averaged ratings are those of the game without the clone (Balduzzi et al.'s invariance)."""
    m = np.array([[0.5, 0.5, 0.0, 1.0], [0.5, 0.5, 0.0, 1.0], [1.0, 1.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.5]])
    vertex = nash_policy(m)
    assert duality_gap(m, vertex) < 1e-9 and min(vertex[0], vertex[1]) < 1e-9  # the LP: one clone only
    p = max_entropy_nash(m)
    np.testing.assert_allclose(p, [1 / 6, 1 / 6, 1 / 3, 1 / 3], atol=1e-7)
    assert duality_gap(m, p) < 1e-9 and entropy(p) > entropy(vertex)
    np.testing.assert_allclose(nash_averaged(m, p), [0.0] * 4, atol=1e-7)
    # A pool of ties: every mixture is a Nash policy; the maximum-entropy one is uniform.
    np.testing.assert_allclose(max_entropy_nash(np.full((4, 4), 0.5)), [0.25] * 4, atol=1e-7)


def test_a_two_dimensional_nash_set_with_a_dominated_checkpoint():
    """Clones of two strategies of RPS plus a checkpoint beaten by all: the Nash set is 2-dimensional."""
    base = np.array([[0.5, 0.2, 0.8, 0.9], [0.8, 0.5, 0.2, 0.9], [0.2, 0.8, 0.5, 0.9], [0.1, 0.1, 0.1, 0.5]])
    copies = [0, 0, 1, 1, 1, 2, 3]
    m = base[np.ix_(copies, copies)]
    p = max_entropy_nash(m)
    np.testing.assert_allclose(p, [1 / 6, 1 / 6, 1 / 9, 1 / 9, 1 / 9, 1 / 3, 0.0], atol=1e-7)
    assert duality_gap(m, p) < 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_random_pools_with_clones_split_mass_equally(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    x = rng.random((n, n))
    base = 0.5 + (x - x.T) / 2
    copies = np.concatenate([np.arange(n), rng.integers(0, n, size=3)])
    m = base[np.ix_(copies, copies)]
    p = max_entropy_nash(m)
    assert duality_gap(m, p) < 1e-8 and p.sum() == pytest.approx(1.0)
    unique = max_entropy_nash(base)  # a random game's Nash is unique: the LP's
    np.testing.assert_allclose(unique, nash_policy(base), atol=1e-7)
    for k in range(n):  # each original's mass is split equally over its copies
        clones = np.flatnonzero(copies == k)
        np.testing.assert_allclose(p[clones], unique[k] / clones.size, atol=1e-6)
    ratings = nash_averaged(m, p)
    assert np.all(ratings <= 1e-9)
    np.testing.assert_allclose(ratings, nash_averaged(base, unique)[copies], atol=1e-6)


def test_a_noisy_matrix_from_data_is_symmetrised():
    """A CSV-rounded matrix whose M[i, j] + M[j, i] ≠ 1 (ties, failed comparisons, rounding):
    (M + 1 − Mᵀ)/2 is a preference matrix, the nearest one, and the summaries are those of it."""
    noisy = np.array([[0.5, 0.1012, 0.7987], [0.8993, 0.5, 0.1013], [0.2008, 0.9002, 0.5]])
    with pytest.raises(ValueError, match="P \\+ Pᵀ must be 1"):
        nash_policy(noisy)  # the LP refuses it as it is
    fixed = symmetrise(noisy)
    np.testing.assert_allclose(fixed + fixed.T, 1.0, atol=1e-15)
    assert fixed[0, 1] == pytest.approx((0.1012 + 1 - 0.8993) / 2) and np.all(np.diag(fixed) == 0.5)
    np.testing.assert_array_equal(symmetrise(PAPER_MATRIX), PAPER_MATRIX)  # exact matrices are unchanged
    result = meta_game(noisy)
    np.testing.assert_allclose(result["meta_nash"], max_entropy_nash(fixed), atol=1e-12)
    np.testing.assert_allclose(result["meta_nash"], [4 / 11, 3 / 11, 4 / 11], atol=2e-3)  # near the paper's
    np.testing.assert_allclose(result["pool_exploitability"], pool_exploitability(fixed))
    # A diagonal read as 50% ± rounding, or missing, is ½; a missing off-diagonal cell: no game.
    assert meta_game(np.where(np.eye(3, dtype=bool), np.nan, noisy)) is not None
    assert meta_game(np.where(np.eye(3, k=1, dtype=bool), np.nan, noisy)) is None
    with pytest.raises(ValueError, match="square"):
        symmetrise(np.ones((2, 3)) / 2)


def test_the_summary_table_has_the_meta_game_columns():
    labels = ["SFT", "A", "B"]
    checkpoints = [{"name": n.lower(), "label": n, "generation": f"g{i}"} for i, n in enumerate(labels)]
    lengths = {f"g{i}": 3.0 for i in range(3)}
    rows = summary_rows(labels, PAPER_MATRIX, checkpoints, lengths, {})
    np.testing.assert_allclose([r["meta_nash"] for r in rows], [4 / 11, 3 / 11, 4 / 11], atol=1e-9)
    assert [r["pool_exploitability"] for r in rows] == pytest.approx([0.4, 0.4, 0.3])
    assert all(r["nash_averaged"] == 0.0 and str(r["nash_averaged"]) == "0.0" for r in rows)  # never "-0.0"
    keys = list(rows[0])
    assert keys[keys.index("missing_cells") + 1:keys.index("avg_tokens")] == list(META_COLUMNS)
    missing = PAPER_MATRIX.copy()
    missing[0, 1] = missing[1, 0] = np.nan
    assert all(r[c] is None for r in summary_rows(labels, missing, checkpoints, lengths, {}) for c in META_COLUMNS)
