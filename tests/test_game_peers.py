"""Exact tabular MNPO, ONPO and EGPO (issue 16): last-iterate convergence to the Nash policy
(ONPO) or to the J_τ equilibrium of an independent solver (MNPO, EGPO with a fixed reference),
MNPO with window 1 = INPO, parameter validation, and ``linepo game`` for the new methods."""

import json
import subprocess
import sys

import numpy as np
import pytest

from linepo.games import game as games
from linepo.games import peers
from linepo.games.runs import GameSettings, relevant_settings, run_algorithm

#: README horizons: ONPO η = 2, 2000 iterations (10 000 on the 5×5 game); MNPO and EGPO
#: η = 1, τ = 0.1, 1000 iterations.
ONPO_ETA, ONPO_HORIZON, ONPO_HORIZON_5 = 2.0, 2000, 10_000
ETA, TAU, HORIZON = 1.0, 0.1, 1000


def interior_game(n: int, seed: int):
    """P = ½ + A with A antisymmetric and A x = 0 for a random interior x: x is a Nash policy
    (every response wins exactly ½ against it), unique for odd n (A has a 1-dimensional kernel)."""
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.full(n, 10.0))
    b = rng.normal(size=(n, n))
    m = np.eye(n) - np.outer(np.ones(n), x)  # mᵀ x = 0
    a = m @ (b - b.T) @ m.T
    return 0.5 + 0.45 * a / np.abs(a).max(), x


PAPER = (games.PAPER_MATRIX, games.PAPER_INIT, ONPO_HORIZON)
GAMES = [PAPER] + [(*interior_game(3, s), ONPO_HORIZON) for s in range(3)] + [
    (*interior_game(5, 2), ONPO_HORIZON_5)]
IDS = ["paper", "random3-0", "random3-1", "random3-2", "random5-2"]


def start(matrix, init):
    return init if len(init) == matrix.shape[0] else np.full(matrix.shape[0], 1 / matrix.shape[0])


@pytest.mark.parametrize("matrix, nash, horizon", GAMES, ids=IDS)
def test_games_have_the_constructed_interior_nash(matrix, nash, horizon):
    games.validate_preference_matrix(matrix)
    expected = [4 / 11, 3 / 11, 4 / 11] if matrix is games.PAPER_MATRIX else nash
    np.testing.assert_allclose(games.nash_policy(matrix), expected, atol=1e-9)
    assert min(expected) > 0.05


@pytest.mark.parametrize("matrix, nash, horizon", GAMES, ids=IDS)
def test_onpo_last_iterate_reaches_nash(matrix, nash, horizon):
    init = np.full(matrix.shape[0], 1 / matrix.shape[0])
    trajectory = peers.onpo(matrix, init, eta=ONPO_ETA, iterations=horizon)
    assert games.duality_gap(matrix, trajectory.last_iterate) <= 1e-6
    np.testing.assert_allclose(trajectory.last_iterate, games.nash_policy(matrix), atol=1e-5)


def test_onpo_is_omwu_in_log_space():
    """log π_{t+1} − log π_t = η(2 g_t − g_{t−1}) for t ≥ 1, and π_1 = Prox(π_0, 2η g_0)."""
    p, init, eta = games.PAPER_MATRIX, games.PAPER_INIT, 0.3
    pis = peers.onpo(p, init, eta=eta, iterations=20).policies
    np.testing.assert_allclose(pis[1], games.prox(init, 2 * eta * p @ init), atol=1e-14)
    for t in range(1, 19):
        step = np.log(pis[t + 1]) - np.log(pis[t]) - eta * (2 * p @ pis[t] - p @ pis[t - 1])
        assert np.ptp(step) < 1e-12  # equal up to the normalising constant


@pytest.mark.parametrize("matrix, nash, horizon", GAMES, ids=IDS)
@pytest.mark.parametrize("method", ["egpo", "mnpo", "mnpo3"])
def test_fixed_reference_methods_reach_the_regularised_equilibrium(matrix, nash, horizon, method):
    init = start(matrix, games.PAPER_INIT)
    target = peers.regularized_equilibrium(matrix, init, tau=TAU)
    # the independent solver's point is the regularised best response to itself
    best_response = peers._normalise_logits(np.log(init) + matrix @ target / TAU)
    np.testing.assert_allclose(best_response, target, atol=1e-12)
    if method == "egpo":
        trajectory = peers.egpo(matrix, init, eta=ETA, tau=TAU, iterations=HORIZON)
    else:
        window, weights = (1, [1.0]) if method == "mnpo" else (3, [0.5, 0.3, 0.2])
        trajectory = peers.mnpo(matrix, init, eta=ETA, tau=TAU, iterations=HORIZON,
                                window=window, weights=weights)
    np.testing.assert_allclose(trajectory.last_iterate, target, atol=1e-6)
    assert games.duality_gap(matrix, target) > 1e-3  # not the Nash policy of J


def test_mnpo_window_one_is_inpo():
    p, init = games.PAPER_MATRIX, games.PAPER_INIT
    expected = games.inpo(p, init, eta=0.7, tau=0.2, iterations=200).policies
    got = peers.mnpo(p, init, eta=0.7, tau=0.2, iterations=200, window=1, weights=[1]).policies
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)  # float round-off only


def test_mnpo_short_history_renormalises():
    p, init = games.PAPER_MATRIX, games.PAPER_INIT
    np.testing.assert_allclose(peers.history_weights([0.5, 0.3, 0.2], 2), [0.625, 0.375])
    np.testing.assert_allclose(peers.history_weights([0.0, 1.0], 1), [1.0])
    pis = peers.mnpo(p, init, eta=1, tau=0.1, iterations=2, window=3, weights=[0.5, 0.3, 0.2]).policies
    # step 1 has only π_0: the same as INPO's first step
    np.testing.assert_allclose(pis[1], games.regularized_step(p, init, init, eta=1, tau=0.1), atol=1e-14)
    centre = 0.1 * np.log(init) + 0.9 * (0.625 * np.log(pis[1]) + 0.375 * np.log(init))
    np.testing.assert_allclose(pis[2], peers._normalise_logits(centre + p @ pis[1]), atol=1e-14)


@pytest.mark.parametrize("window, weights, name", [
    (0, None, "--window"), (2.5, None, "--window"), (2, [1.0], "--weights"),
    (2, [0.5, 0.6], "--weights"), (2, [1.5, -0.5], "--weights"), (1, ["a"], "--weights"),
])
def test_bad_mixture_names_the_parameter(window, weights, name):
    with pytest.raises(games.InvalidGameError, match=f"^{name}: "):
        peers.validate_mixture(window, weights)


def test_run_algorithm_and_relevant_settings():
    s = GameSettings(iterations=50, window=2, weights=(0.5, 0.5))
    for name in ("mnpo", "onpo", "egpo"):
        trajectory = run_algorithm(name, games.PAPER_MATRIX, games.PAPER_INIT, s)
        assert trajectory.algorithm == name and len(trajectory.policies) == 51
    assert relevant_settings("onpo") == ("eta", "iterations")
    assert relevant_settings("egpo") == ("eta", "iterations", "tau")
    assert relevant_settings("mnpo") == ("eta", "iterations", "tau", "window", "weights")


def linepo(*args):
    return subprocess.run([sys.executable, "-m", "linepo.cli", *args], capture_output=True, text=True)


def test_cli_onpo_json_and_tol():
    result = linepo("game", "--algorithm", "onpo", "--eta", "2", "--iterations", "2000", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["algorithm"] == "onpo" and summary["duality_gap"] <= 1e-6
    result = linepo("game", "--algorithm", "onpo", "--eta", "2", "--iterations", "2000", "--tol", "1e-6", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["converged"] and summary["iterations_run"] < 2000


def test_cli_mnpo_weights():
    result = linepo("game", "--algorithm", "mnpo", "--window", "3", "--weights", "[0.5, 0.3, 0.2]", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"]["weights"] == [0.5, 0.3, 0.2]


@pytest.mark.parametrize("args, name", [
    (["--window", "0"], "--window"), (["--weights", "[0.5, 0.6]", "--window", "2"], "--weights"),
    (["--weights", "not json"], "--weights"), (["--weights", "[1, 0]"], "--weights"),
])
def test_cli_bad_mixture_is_one_line(args, name):
    result = linepo("game", "--algorithm", "mnpo", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr


# ----------------------------------------------------------------- MNPO in the workflow's synthetic section


def _synthetic_config(**mnpo):
    import copy

    import yaml

    from workflow_utils import REPO

    config = copy.deepcopy(yaml.safe_load((REPO / "config.yaml").read_text()))
    setting = config["synthetic"]["settings"]["paper_exact"]
    setting["algorithms"] = [*setting["algorithms"], "mnpo"]
    setting.update(mnpo)
    return config


def test_the_workflow_passes_mnpos_window_and_weights_to_linepo_game():
    import shlex
    from types import SimpleNamespace

    from linepo.workflow.config import validate_config
    from linepo.workflow.wiring import Wiring

    wiring = Wiring(validate_config(_synthetic_config(window=3, weights=[0.5, 0.3, 0.2])))
    flags = shlex.split(wiring.synthetic_flags(SimpleNamespace(setting="paper_exact", algorithm="mnpo")))
    assert flags[flags.index("--window") + 1] == "3"
    assert json.loads(flags[flags.index("--weights") + 1]) == [0.5, 0.3, 0.2]
    uniform = Wiring(validate_config(_synthetic_config(window=2)))
    assert "--weights" not in uniform.synthetic_flags(SimpleNamespace(setting="paper_exact", algorithm="mnpo"))
    # another algorithm's flags do not name MNPO's settings (an MNPO edit reruns only MNPO)
    assert "--window" not in wiring.synthetic_flags(SimpleNamespace(setting="paper_exact", algorithm="inpo"))


@pytest.mark.parametrize("mnpo, key, reason", [
    ({"window": 2, "weights": [0.5, 0.3, 0.2]}, "weights", "needs one weight per past iterate"),
    ({"window": 2, "weights": [0.6, 0.6]}, "weights", "must sum to 1"),
])
def test_bad_mnpo_settings_fail_at_config_time_naming_the_key(mnpo, key, reason):
    from linepo.errors import InputError
    from linepo.workflow.config import validate_config

    with pytest.raises(InputError) as info:
        validate_config(_synthetic_config(**mnpo))
    message = str(info.value)
    assert message.startswith(f"config key synthetic.settings.paper_exact.{key}: {reason}") and "\n" not in message
