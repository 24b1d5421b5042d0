"""Sample-based dynamics (Figure 2): the LLM losses on a tabular policy."""

from dataclasses import replace

import numpy as np
import pytest

from linepo.games import game as games
from linepo.games.sampled import draw_preferences, fit_policy
from linepo.games.runs import DEFAULTS, run_algorithm

P = games.PAPER_MATRIX
START = games.PAPER_INIT


@pytest.fixture(scope="module")
def trajectories():
    return {name: run_algorithm(name, P, START, DEFAULTS)
            for name in ["iter_dpo", "iter_ipo", "sppo", "inpo_sampled", "linepo_sampled"]}


def test_linepo_sampled_reaches_nash(trajectories):
    assert games.duality_gap(P, trajectories["linepo_sampled"].last_iterate) <= 0.02


@pytest.mark.parametrize("name", ["iter_dpo", "iter_ipo", "sppo"])
def test_iterative_methods_cycle(trajectories, name):
    gaps = trajectories[name].duality_gaps()
    assert gaps[-1] >= 0.1
    assert gaps[-50:].min() >= 0.1


def test_inpo_sampled_stays_away_from_nash(trajectories):
    gaps = trajectories["inpo_sampled"].duality_gaps()
    assert gaps[-50:].min() >= 0.03


def test_oracle_labels_follow_the_matrix():
    rng = np.random.default_rng(0)
    wins, appearances = draw_preferences(P, np.ones(3) / 3, 200_000, rng)
    assert appearances.sum() == 400_000
    for i, j in [(1, 0), (2, 1), (0, 2)]:
        rate = wins[i, j] / (wins[i, j] + wins[j, i])
        assert rate == pytest.approx(P[i, j], abs=0.01)


def test_sampled_ipo_step_approaches_the_exact_prox_step():
    rng = np.random.default_rng(1)
    mu = np.array([0.3, 0.3, 0.4])
    wins, appearances = draw_preferences(P, mu, 400_000, rng)
    fitted = fit_policy("ipo", wins, appearances, current=mu, reference=mu, eta=1.0, tau=0.0)
    np.testing.assert_allclose(fitted, games.prox(mu, P @ mu), atol=5e-3)


def test_same_seed_same_trajectory():
    settings = replace(DEFAULTS, iterations=5, samples=1000)
    a = run_algorithm("linepo_sampled", P, START, settings)
    b = run_algorithm("linepo_sampled", P, START, settings)
    np.testing.assert_array_equal(a.policies, b.policies)
    c = run_algorithm("linepo_sampled", P, START, replace(settings, seed=1))
    assert not np.array_equal(a.policies, c.policies)
