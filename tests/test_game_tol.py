"""`linepo game --tol`: stop at a duality-gap tolerance and say whether it was reached."""

import json
import subprocess
import sys

import numpy as np
import pytest

from linepo.games import game as games
from linepo.games.runs import GameSettings, load_trajectory, run_algorithm, summary

#: the horizon the README states: on the paper's game from [0.2, 0.5, 0.3] with the default
#: η = 1 (τ = 0.1, 20 inner steps), LINE-PO, Mirror-Prox and OMWU reach gap ≤ 1e-6 within it
HORIZON = 1000


def linepo(*args):
    return subprocess.run([sys.executable, "-m", "linepo.cli", "game", *args], capture_output=True, text=True)


@pytest.mark.parametrize("algorithm", ["linepo", "mirror_prox", "omwu"])
def test_last_iterate_methods_reach_1e_6_on_the_papers_game(algorithm):
    settings = GameSettings(iterations=HORIZON)
    trajectory = run_algorithm(algorithm, games.PAPER_MATRIX, games.PAPER_INIT, settings, tol=1e-6)
    result = summary(trajectory)
    assert result["converged"] and result["tol"] == 1e-6
    assert result["duality_gap"] <= 1e-6 and result["iterations_run"] < HORIZON
    # It stopped at the first check that passed: the previous check point was above tol.
    step = settings.inner_steps if algorithm == "linepo" else 1
    assert result["iterations_run"] % step == 0
    assert games.duality_gap(games.PAPER_MATRIX, trajectory.policies[-1 - step]) > 1e-6
    # The stopped run is the prefix of the full run: stopping changes nothing before it.
    full = run_algorithm(algorithm, games.PAPER_MATRIX, games.PAPER_INIT, settings)
    np.testing.assert_array_equal(trajectory.policies, full.policies[:len(trajectory.policies)])
    np.testing.assert_array_equal(trajectory.rounds, full.rounds[:len(trajectory.rounds)])


def test_human_output_says_reached_and_json_has_the_fields(tmp_path):
    out = tmp_path / "omwu.parquet"
    result = linepo("--algorithm", "omwu", "--iterations", str(HORIZON), "--tol", "1e-6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1].strip()
    assert last.startswith("reached duality gap ≤ 1e-06 after ") and last.endswith(" iterations")
    runs = int(last.split(" after ")[1].split()[0])
    assert 0 < runs < HORIZON
    _, frame = load_trajectory(out)
    assert len(frame) == runs + 1 and frame["duality_gap"].iloc[-1] <= 1e-6
    data = json.loads(linepo("--algorithm", "omwu", "--iterations", str(HORIZON), "--tol", "1e-6", "--json").stdout)
    assert data["tol"] == 1e-6 and data["converged"] is True and data["iterations_run"] == runs == data["iterations"]


def test_mirror_descent_cycles_and_is_reported_not_reached():
    result = linepo("--algorithm", "md", "--iterations", str(HORIZON), "--tol", "1e-6")
    assert result.returncode == 0, result.stderr  # not reaching tol is an answer, not an error
    last = result.stdout.strip().splitlines()[-1].strip()
    assert last.startswith("NOT reached: duality gap ") and last.endswith(
        f"> 1e-06 after the maximum {HORIZON} iterations (--iterations)")
    data = json.loads(linepo("--algorithm", "md", "--iterations", str(HORIZON), "--tol", "1e-6", "--json").stdout)
    assert data["converged"] is False and data["iterations_run"] == HORIZON and data["duality_gap"] > 1e-6
    strict = linepo("--algorithm", "md", "--iterations", "50", "--tol", "1e-6", "--require-tol", "--json")
    assert strict.returncode == 1 and json.loads(strict.stdout)["converged"] is False
    assert linepo("--algorithm", "omwu", "--iterations", str(HORIZON), "--tol", "1e-6", "--require-tol").returncode == 0


def test_without_tol_the_output_is_unchanged():
    data = json.loads(linepo("--algorithm", "linepo", "--json").stdout)
    assert set(data) == {"algorithm", "nash", "last_iterate", "duality_gap", "kl_to_nash", "iterations", "rounds",
                         "params"}
    assert data["iterations"] == 300 and "tol" not in data["params"]
    lines = linepo("--algorithm", "linepo").stdout.splitlines()
    assert len(lines) == 4 and lines[-1].strip().startswith("duality gap")


@pytest.mark.parametrize("value, reason", [("0", "> 0"), ("-0.001", "> 0"), ("-1e-6", "argument --tol"), ("abc", "float"),
                                           ("nan", "> 0"),
                                           ("inf", "finite")])
def test_bad_tol_is_one_line_naming_it(value, reason):
    result = linepo("--algorithm", "omwu", "--tol", value)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tol" in lines[0] and reason in lines[0], result.stderr


def test_require_tol_without_tol_is_one_line():
    result = linepo("--algorithm", "omwu", "--require-tol")
    assert result.returncode == 2 and "--tol" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sampled_runs_check_the_exact_gap_of_their_noisy_iterates():
    """Sampled: tol applies (the gap of a tabular iterate is exact); LINE-PO checks at round ends.

    With 2000 pairs per iteration the gap hovers around 0.15–0.3: 0.2 is reached at the end of
    a round, 1e-6 is far below the noise floor and is not.
    """
    base = ["--algorithm", "linepo_sampled", "--samples", "2000", "--inner-steps", "5", "--iterations", "40", "--json"]
    loose = json.loads(linepo(*base, "--tol", "0.2").stdout)
    assert loose["converged"] and loose["duality_gap"] <= 0.2 and loose["iterations_run"] % 5 == 0
    assert loose["iterations_run"] < 40
    tight = json.loads(linepo(*base, "--tol", "1e-6").stdout)
    assert not tight["converged"] and tight["iterations_run"] == 40 and tight["duality_gap"] > 1e-3
