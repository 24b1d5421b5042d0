"""`linepo game` / `linepo game-figure` as a user runs them."""

import json
import subprocess
import sys

import numpy as np
import pytest

from linepo.games.runs import load_trajectory

PAPER = "[[0.5,0.1,0.8],[0.9,0.5,0.1],[0.2,0.9,0.5]]"


def linepo(*args):
    return subprocess.run([sys.executable, "-m", "linepo.cli", *args], capture_output=True, text=True)


def test_json_summary_and_trajectory_file(tmp_path):
    out = tmp_path / "linepo.parquet"
    result = linepo("game", "--matrix", PAPER, "--algorithm", "linepo", "--iterations", "300", "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {"nash", "last_iterate", "duality_gap", "algorithm"} <= set(summary)
    assert summary["algorithm"] == "linepo"
    np.testing.assert_allclose(summary["nash"], [4 / 11, 3 / 11, 4 / 11], atol=1e-12)
    assert summary["duality_gap"] <= 1e-4
    meta, frame = load_trajectory(out)
    assert len(frame) == 301 and meta["algorithm"] == "linepo"
    assert frame["duality_gap"].iloc[-1] == pytest.approx(summary["duality_gap"])
    assert frame["round"].iloc[-1] == 15  # 300 inner steps / 20 per round


def test_custom_game_and_start(tmp_path):
    rps = "[[0.5,0,1],[1,0.5,0],[0,1,0.5]]"  # rock-paper-scissors: Nash is uniform
    result = linepo("game", "--matrix", rps, "--init", "[0.6,0.3,0.1]", "--algorithm", "omwu",
                    "--eta", "0.5", "--iterations", "2000", "--json")
    summary = json.loads(result.stdout)
    np.testing.assert_allclose(summary["nash"], [1 / 3] * 3, atol=1e-9)
    assert summary["duality_gap"] < 1e-6


@pytest.mark.parametrize(
    "args, names",
    [
        (["--matrix", "[[0.5,0.5,0.5],[0.5,0.5]]"], "--matrix"),
        (["--matrix", "[[0.5,1.5],[-0.5,0.5]]"], "--matrix"),
        (["--matrix", "[[0.5,0.3],[0.6,0.5]]"], "--matrix"),
        (["--matrix", "not json"], "--matrix"),
        (["--init", "[0.5,0.6,-0.1]"], "--init"),
        (["--init", "[0.5,0.5,0]"], "--init"),
        (["--init", "[0.5,0.5]"], "--init"),
        (["--eta", "0"], "--eta"),
        (["--tau", "-1"], "--tau"),
        (["--iterations", "0"], "--iterations"),
        (["--algorithm", "dpo_plus"], "--algorithm"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, names):
    out = tmp_path / "never.parquet"
    base = ["game", "--algorithm", "linepo"]
    result = linepo(*base, *args, "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()


def test_figure_and_table(tmp_path):
    paths = []
    for algorithm in ["md", "linepo"]:
        path = tmp_path / f"{algorithm}.parquet"
        assert linepo("game", "--algorithm", algorithm, "--iterations", "50", "--out", str(path)).returncode == 0
        paths.append(str(path))
    figure, table = tmp_path / "figure.png", tmp_path / "summary.tsv"
    result = linepo("game-figure", *paths, "--out", str(figure), "--table", str(table))
    assert result.returncode == 0, result.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    rows = table.read_text().splitlines()
    assert rows[0].startswith("algorithm\titerations\tduality_gap") and len(rows) == 3


def test_figure_with_missing_trajectory_fails_cleanly(tmp_path):
    result = linepo("game-figure", str(tmp_path / "absent.parquet"), "--out", str(tmp_path / "f.png"))
    assert result.returncode == 2 and "absent.parquet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "f.png").exists()
