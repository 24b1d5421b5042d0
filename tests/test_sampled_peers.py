"""Sample-based twins of Mirror-Prox, OMWU, ONPO, MNPO, EGPO and MNPO/EGPO with a moving
reference (issue 16), and the exact moving-reference variants: with pairs in their expected
counts each twin is its exact dynamics; with drawn pairs it lands near the exact fixed point;
every fit is the LLM trainer's loss; the moving-reference variants reach the Nash policy within
the README's horizons."""

import json
import subprocess
import sys

import numpy as np
import pytest

from linepo.algorithms import ALGORITHMS, REGISTRY
from linepo.games import game as games
from linepo.games import peers
from linepo.games.runs import ALGORITHMS as GAME_ALGORITHMS
from linepo.games.runs import GameSettings, relevant_settings, run_algorithm
from linepo.games.sampled_peers import PEER_SAMPLED, expected_pairs, run_sampled_peer
from test_game_peers import GAMES, IDS, interior_game, start

ETA, TAU, INNER, WINDOW, WEIGHTS = 1.0, 0.1, 5, 3, [0.5, 0.3, 0.2]
#: README horizons of the moving-reference variants and Appendix H's methods: η = 1, τ = 0.1,
#: 20 inner steps, 1000 iterations on 3×3 games; η = 2, 10 000 iterations on the 5×5 game.
HORIZON_3, ETA_5, HORIZON_5 = 1000, 2.0, 10_000


def exact_twin(name, matrix, init, iterations):
    """The exact dynamics a twin stands for (OMWU: the two-sequence form of the LLM schedule,
    whose half steps are :func:`games.optimistic_mwu`'s iterates; checked separately)."""
    if name == "mirror_prox_sampled":
        return games.mirror_prox(matrix, init, eta=ETA, iterations=iterations).policies
    if name == "omwu_sampled":
        policies, previous = [init], init
        for _ in range(iterations):
            half = games.prox(policies[-1], ETA * games.win_rates_against(matrix, previous))
            policies.append(games.prox(policies[-1], ETA * games.win_rates_against(matrix, half)))
            previous = half
        return np.array(policies)
    if name == "onpo_sampled":
        return peers.onpo(matrix, init, eta=ETA, iterations=iterations).policies
    moves = INNER if "_moves" in name else None
    if name.startswith("mnpo"):
        return peers.mnpo(matrix, init, eta=ETA, tau=TAU, iterations=iterations, window=WINDOW,
                          weights=WEIGHTS, inner_steps=moves).policies
    return peers.egpo(matrix, init, eta=ETA, tau=TAU, iterations=iterations, inner_steps=moves).policies


def twin(name, matrix, init, iterations, *, samples=1000, seed=0, draw=None, halves=None, eta=ETA, inner=INNER):
    return run_sampled_peer(name, matrix, init, eta=eta, tau=TAU, iterations=iterations, samples=samples,
                            inner_steps=inner, seed=seed, window=WINDOW, weights=WEIGHTS, draw=draw, halves=halves)


FIVE = interior_game(5, 2)


@pytest.mark.parametrize("name", list(PEER_SAMPLED))
@pytest.mark.parametrize("matrix, init", [(games.PAPER_MATRIX, games.PAPER_INIT),
                                          (FIVE[0], np.random.default_rng(7).dirichlet(np.full(5, 3.0)))],
                         ids=["paper", "random5"])
def test_expected_counts_make_each_twin_its_exact_dynamics(name, matrix, init):
    trajectory = twin(name, matrix, init, 25, draw=expected_pairs(matrix, 1000))
    np.testing.assert_allclose(trajectory.policies, exact_twin(name, matrix, init, 25), atol=1e-6)
    if "_moves" in name:
        assert trajectory.rounds.tolist() == games.outer_rounds(25, INNER)


def test_the_omwu_twins_half_steps_are_the_tabular_omwu_iterates():
    halves = []
    twin("omwu_sampled", games.PAPER_MATRIX, games.PAPER_INIT, 30, draw=expected_pairs(games.PAPER_MATRIX, 1000),
         halves=halves)
    exact = games.optimistic_mwu(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, iterations=30).policies
    np.testing.assert_allclose(np.array(halves), exact[1:], atol=1e-6)


@pytest.mark.parametrize("name, fits, loss", [
    ("mirror_prox_sampled", 2, "ipo"), ("omwu_sampled", 2, "ipo"), ("onpo_sampled", 2, "ipo"),
    ("mnpo_sampled", 1, "inpo"), ("egpo_sampled", 2, "inpo"), ("egpo_moves_sampled", 2, "inpo"),
])
def test_every_fit_is_the_llm_trainers_loss(monkeypatch, name, fits, loss):
    """The twins call linepo.losses.preference_loss — the trainer's — with their registry loss,
    and draw fresh pairs as the LLM schedule samples (OMWU reuses the last full step's, ONPO
    fits twice on one draw)."""
    import linepo.losses as losses

    seen, draws = [], []
    real = losses.preference_loss

    def spy(loss_name, batch, **kw):
        seen.append(loss_name)
        return real(loss_name, batch, **kw)

    monkeypatch.setattr(losses, "preference_loss", spy)
    exact = expected_pairs(games.PAPER_MATRIX, 1000)
    iterations = 4
    twin(name, games.PAPER_MATRIX, games.PAPER_INIT, iterations, draw=lambda p: draws.append(p) or exact(p))
    assert set(seen) == {loss} == {PEER_SAMPLED[name][0].loss}
    expected_draws = {"mirror_prox_sampled": 2 * iterations, "omwu_sampled": iterations + 1,
                      "onpo_sampled": iterations}.get(name, fits * iterations)
    assert len(draws) == expected_draws


@pytest.mark.parametrize("name", ["mirror_prox_sampled", "omwu_sampled", "onpo_sampled",
                                  "mnpo_moves_sampled", "egpo_moves_sampled"])
def test_drawn_pairs_last_iterate_near_the_nash_policy(name):
    """With 20 000 oracle-labelled pairs per draw (η = 2, 10 inner steps), the convergent methods'
    last iterate after 120 iterations sits at the sampling floor of the Nash policy, far below
    where it started."""
    matrix, init = games.PAPER_MATRIX, games.PAPER_INIT
    trajectory = twin(name, matrix, init, 120, samples=20_000, eta=2.0, inner=10)
    last = np.mean(trajectory.policies[-20:], axis=0)  # the floor's noise averaged a little
    assert games.duality_gap(matrix, trajectory.last_iterate) < 0.05 < games.duality_gap(matrix, init)
    np.testing.assert_allclose(last, games.nash_policy(matrix), atol=0.03)


@pytest.mark.parametrize("name", ["mnpo_sampled", "egpo_sampled"])
def test_drawn_pairs_fixed_reference_settles_at_the_regularised_equilibrium(name):
    matrix, init = games.PAPER_MATRIX, games.PAPER_INIT
    trajectory = twin(name, matrix, init, 120, samples=20_000, eta=2.0)
    target = peers.regularized_equilibrium(matrix, init, tau=TAU)
    np.testing.assert_allclose(np.mean(trajectory.policies[-20:], axis=0), target, atol=0.02)
    nash = games.nash_policy(matrix)
    assert np.abs(target - nash).max() > 0.05  # the two points are told apart at this tolerance


def test_the_same_seed_gives_the_same_trajectory_and_another_seed_another():
    a = twin("egpo_sampled", games.PAPER_MATRIX, games.PAPER_INIT, 10, seed=3)
    b = twin("egpo_sampled", games.PAPER_MATRIX, games.PAPER_INIT, 10, seed=3)
    c = twin("egpo_sampled", games.PAPER_MATRIX, games.PAPER_INIT, 10, seed=4)
    np.testing.assert_array_equal(a.policies, b.policies)
    assert not np.allclose(a.policies, c.policies)


# -- exact: the moving-reference variants and Appendix H's methods reach the Nash policy ------


def _converged(name, matrix, init, eta, horizon):
    if name == "mirror_prox":
        return games.mirror_prox(matrix, init, eta=eta, iterations=horizon, tol=1e-6)
    if name == "omwu":
        return games.optimistic_mwu(matrix, init, eta=eta, iterations=horizon, tol=1e-6)
    if name == "mnpo_moves":
        return peers.mnpo(matrix, init, eta=eta, tau=TAU, iterations=horizon, window=WINDOW, weights=WEIGHTS,
                          inner_steps=20, tol=1e-6)
    return peers.egpo(matrix, init, eta=eta, tau=TAU, iterations=horizon, inner_steps=20, tol=1e-6)


@pytest.mark.parametrize("matrix, nash, horizon", GAMES, ids=IDS)
@pytest.mark.parametrize("name", ["mirror_prox", "omwu", "mnpo_moves", "egpo_moves"])
def test_last_iterate_reaches_the_nash_policy_within_the_readme_horizon(matrix, nash, horizon, name):
    init = start(matrix, games.PAPER_INIT)
    eta, horizon = (ETA, HORIZON_3) if matrix.shape[0] == 3 else (ETA_5, HORIZON_5)
    trajectory = _converged(name, matrix, init, eta, horizon)
    assert len(trajectory.policies) - 1 < horizon
    assert games.duality_gap(matrix, trajectory.last_iterate) <= 1e-6
    np.testing.assert_allclose(trajectory.last_iterate, games.nash_policy(matrix), atol=1e-4)


def test_a_moving_reference_stops_only_at_round_ends():
    trajectory = peers.egpo(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, tau=TAU, iterations=HORIZON_3,
                            inner_steps=20, tol=1e-6)
    assert (len(trajectory.policies) - 1) % 20 == 0 and trajectory.params["inner_steps"] == 20
    assert trajectory.rounds[-1] == (len(trajectory.policies) - 1) // 20
    with pytest.raises(games.InvalidGameError, match="inner_steps"):
        peers.mnpo(games.PAPER_MATRIX, games.PAPER_INIT, eta=ETA, tau=TAU, iterations=5, inner_steps=0)


def test_without_moves_the_variants_are_the_fixed_reference_methods():
    for fixed in ("mnpo", "egpo"):
        kw = dict(eta=ETA, tau=TAU, iterations=40)
        if fixed == "mnpo":
            kw.update(window=WINDOW, weights=WEIGHTS)
        run = getattr(peers, fixed)
        never = run(games.PAPER_MATRIX, games.PAPER_INIT, inner_steps=1000, **kw)
        np.testing.assert_array_equal(never.policies, run(games.PAPER_MATRIX, games.PAPER_INIT, **kw).policies)


# -- registry, `linepo game` --------------------------------------------------------------


def test_every_iterative_method_with_an_exact_twin_has_a_sampled_one():
    for a in REGISTRY:
        if a.exact is not None:
            assert a.sampled in GAME_ALGORITHMS, a.name
    movable_peers = {a.name for a in REGISTRY if a.movable and a.schedule != "single"}
    assert {f"{n}_moves_sampled" for n in movable_peers} <= set(PEER_SAMPLED)
    assert {f"{n}_moves" for n in movable_peers} <= set(GAME_ALGORITHMS)
    assert all(spec is ALGORITHMS[spec.name] for spec, _ in PEER_SAMPLED.values())


def test_run_algorithm_and_relevant_settings_of_the_new_names():
    s = GameSettings(iterations=6, samples=500, inner_steps=3, window=2, weights=(0.5, 0.5))
    for name in ("mnpo_moves", "egpo_moves", *PEER_SAMPLED):
        trajectory = run_algorithm(name, games.PAPER_MATRIX, games.PAPER_INIT, s)
        assert trajectory.algorithm == name and len(trajectory.policies) == 7
    assert relevant_settings("mirror_prox_sampled") == ("eta", "iterations", "samples", "seed")
    assert relevant_settings("egpo_moves") == ("eta", "iterations", "tau", "inner_steps")
    assert relevant_settings("mnpo_moves_sampled") == (
        "eta", "iterations", "tau", "inner_steps", "window", "weights", "samples", "seed")


def linepo(*args):
    return subprocess.run([sys.executable, "-m", "linepo.cli", "game", *args], capture_output=True, text=True)


def test_cli_runs_the_twins_and_the_moving_variants():
    result = linepo("--algorithm", "egpo_moves_sampled", "--iterations", "6", "--samples", "2000",
                    "--inner-steps", "3", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["params"]["inner_steps"] == 3 and data["rounds"] == 2
    result = linepo("--algorithm", "mnpo_moves", "--window", "3", "--weights", "[0.5, 0.3, 0.2]",
                    "--iterations", "1000", "--tol", "1e-6", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["converged"] and data["duality_gap"] <= 1e-6
    bad = linepo("--algorithm", "mnpo_moves_sampled", "--window", "0")
    assert bad.returncode == 2 and "--window" in bad.stderr.strip().splitlines()[-1]
