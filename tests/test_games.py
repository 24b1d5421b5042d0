"""The tabular game engine: validation, LP Nash, gap, prox, and the paper's §4 claims."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from linepo.games import game as games
from linepo.games.runs import DEFAULTS, run_algorithm

P = games.PAPER_MATRIX
START = games.PAPER_INIT


def run(algorithm, **overrides):
    from dataclasses import replace

    return run_algorithm(algorithm, P, START, replace(DEFAULTS, **overrides))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "matrix, reason",
    [
        ([[0.5, 0.5]], "not square"),
        ([[0.5, 0.4], [0.6]], "not square"),
        ([[0.5, 1.2], [-0.2, 0.5]], "outside [0, 1]"),
        ([[0.5, 0.3], [0.6, 0.5]], "P + Pᵀ must be 1"),
        ([[0.4, 0.5], [0.5, 0.4]], "P + Pᵀ must be 1"),
        ([[0.5, float("nan")], [0.5, 0.5]], "finite"),
    ],
)
def test_invalid_matrices_are_rejected_with_reason(matrix, reason):
    with pytest.raises(games.InvalidGameError, match=reason.replace("[", r"\[").replace("+", r"\+")):
        games.validate_preference_matrix(matrix)


def test_symmetry_tolerance_is_1e_9():
    games.validate_preference_matrix([[0.5, 0.3 + 5e-10], [0.7, 0.5]])
    with pytest.raises(games.InvalidGameError):
        games.validate_preference_matrix([[0.5, 0.3 + 5e-9], [0.7, 0.5]])


@pytest.mark.parametrize("policy", [[0.5, 0.5], [0.5, 0.6, -0.1], [0.5, 0.5, 0.0], [0.3, 0.3, 0.3]])
def test_invalid_policies_are_rejected(policy):
    with pytest.raises(games.InvalidGameError):
        games.validate_policy(policy, 3)


# ---------------------------------------------------------------- Nash, gap, KL, prox


def test_paper_game_nash_is_4_3_4_over_11():
    # The paper's caption prints [4/11, 3/11, 3/11], which does not sum to 1; the LP
    # (and the hand solution of (P − ½)π = 0) give [4/11, 3/11, 4/11].
    nash = games.nash_policy(P)
    np.testing.assert_allclose(nash, [4 / 11, 3 / 11, 4 / 11], atol=1e-12)
    assert games.duality_gap(P, nash) <= 1e-12


def test_duality_gap_of_pure_policies():
    # Pure y_a: y_b beats it with 0.9; y_a beats itself with 0.5 at worst vs y_b (0.1).
    assert games.duality_gap(P, np.array([1.0, 0, 0])) == pytest.approx(0.9 - 0.1)


def test_kl_handles_zeros_and_support():
    assert games.kl([0.5, 0.5, 0], [0.25, 0.25, 0.5]) == pytest.approx(np.log(2))
    assert games.kl([0.5, 0.5], [1.0, 0.0]) == float("inf")


def test_prox_is_the_entropic_argmax():
    z = np.array([0.2, 0.5, 0.3])
    g = np.array([0.3, -1.0, 2.0])
    expected = z * np.exp(g) / np.sum(z * np.exp(g))
    np.testing.assert_allclose(games.prox(z, g), expected)
    # No overflow for the LLM-scale steps (η of hundreds).
    assert np.all(np.isfinite(games.prox(z, 500 * g)))
    # Optimality: ⟨g, z'⟩ − KL(z'‖z) is maximal at prox(z, g) among random candidates.
    best = games.prox(z, g)
    value = lambda q: g @ q - games.kl(q, z)  # noqa: E731
    for q in np.random.default_rng(0).dirichlet(np.ones(3), size=200):
        assert value(q) <= value(best) + 1e-12


# ---------------------------------------------------------------- the paper's §4 claims


def test_linepo_exact_converges_in_last_iterate():
    assert games.duality_gap(P, run("linepo").last_iterate) <= 1e-4


def test_mirror_descent_cycles_at_the_same_horizon():
    trajectory = run("md")
    assert games.duality_gap(P, trajectory.last_iterate) >= 0.1
    # It does not converge anywhere: the gap stays large over the last 100 iterations.
    assert trajectory.duality_gaps()[-100:].min() >= 0.1


def test_inpo_settles_at_a_regularised_equilibrium_that_is_not_nash():
    trajectory = run("inpo")
    last, previous = trajectory.policies[-1], trajectory.policies[-2]
    assert np.max(np.abs(last - previous)) <= 1e-6
    assert games.duality_gap(P, last) >= 0.03
    # It is the fixed point of the regularised step with the start as reference.
    fixed = games.regularized_step(P, last, START, eta=DEFAULTS.eta, tau=DEFAULTS.tau)
    np.testing.assert_allclose(fixed, last, atol=1e-9)


@pytest.mark.parametrize("algorithm", ["omwu", "mirror_prox"])
def test_optimistic_and_extragradient_methods_converge(algorithm):
    gaps = run(algorithm).duality_gaps()
    assert gaps[-1] <= 1e-3
    assert gaps[-1] < gaps[100] < gaps[0]
    assert games.duality_gap(P, run(algorithm, iterations=1000).last_iterate) <= 1e-8


def test_linepo_rounds_and_reference_moves():
    trajectory = run("linepo", iterations=45, inner_steps=20)
    assert trajectory.rounds[0] == 1 and trajectory.rounds[20] == 1
    assert trajectory.rounds[21] == 2 and trajectory.rounds[-1] == 3


def test_linepo_with_one_round_is_inpo():
    inpo = run("inpo", iterations=50)
    linepo = run("linepo", iterations=50, inner_steps=50)
    np.testing.assert_allclose(inpo.policies, linepo.policies)


# ---------------------------------------------------------------- property tests

probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def random_games(draw):
    n = draw(st.integers(2, 8))
    upper = draw(st.lists(probabilities, min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2))
    p = np.full((n, n), 0.5)
    p[np.triu_indices(n, 1)] = upper
    p[np.tril_indices(n, -1)] = 1 - p.T[np.tril_indices(n, -1)]
    return p


@st.composite
def full_support_games(draw):
    """A game with a chosen full-support Nash policy π*: P = ½ + RᵀBR, R = I − π*1ᵀ.

    B is any antisymmetric matrix; (RᵀBR)π* = 0 and π*ᵀ(RᵀBR) = 0, so every response
    wins exactly half the time against π*.
    """
    n = draw(st.integers(2, 8))
    weights = np.array(draw(st.lists(st.floats(1.0, 10.0), min_size=n, max_size=n)))
    nash = weights / weights.sum()
    b = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=n * n, max_size=n * n))).reshape(n, n)
    b = b - b.T
    r = np.eye(n) - np.outer(nash, np.ones(n))
    a = r.T @ b @ r
    a = (a - a.T) / 2
    scale = np.abs(a).max()
    strength = draw(st.floats(0.2, 0.5))
    a = a / scale * strength if scale > 1e-9 else np.zeros_like(a)
    start = np.array(draw(st.lists(st.floats(1.0, 10.0), min_size=n, max_size=n)))
    return 0.5 + a, nash, start / start.sum()


def scale_free_parameters(p):
    """(η, τ) scaled to the game's strength so one setting fits all random games.

    The dynamics are invariant under A → sA, η → η/s, τ → τ·s (A = P − ½); s is the
    spectral norm of A divided by n, the typical size of A acting on a policy.
    """
    n = p.shape[0]
    s = max(np.linalg.norm(p - 0.5, 2) / n, 1e-3)
    return 0.5 / s, s


def effective_condition(p, nash):
    """Smallest over largest non-zero singular value of A in the entropy geometry at π*."""
    d = np.sqrt(nash)
    sv = np.linalg.svd(d[:, None] * (p - 0.5) * d[None, :], compute_uv=False)
    sv = sv[sv > 1e-9]
    return 1.0 if sv.size == 0 else sv.min() / sv.max()


@settings(max_examples=200, deadline=None)
@given(random_games())
def test_lp_nash_has_zero_gap(p):
    nash = games.nash_policy(p)
    assert nash.min() >= 0 and abs(nash.sum() - 1) <= 1e-12
    assert games.duality_gap(p, nash) <= 1e-8


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(full_support_games())
def test_linepo_kl_to_full_support_nash_never_increases(game):
    """Theorem 1: KL(π*‖πᵗ) is non-increasing over LINE-PO's outer iterates."""
    p, nash, start = game
    eta, tau = scale_free_parameters(p)
    inner = 40
    trajectory = games.linepo(p, start, eta=eta, tau=tau, inner_steps=inner, iterations=inner * 30)
    kls = trajectory.kls_to(nash)[::inner]
    assert np.all(np.diff(kls) <= 1e-10 * max(1.0, kls[0]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(full_support_games())
def test_linepo_reaches_the_nash_policy_on_random_games(game):
    p, nash, start = game
    # Convergence speed depends on conditioning; test well-conditioned games.
    assume(effective_condition(p, nash) >= 0.2)
    eta, tau = scale_free_parameters(p)
    trajectory = games.linepo(p, start, eta=eta, tau=tau, inner_steps=10, iterations=20_000)
    assert games.duality_gap(p, trajectory.last_iterate) <= 1e-3
