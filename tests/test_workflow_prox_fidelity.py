"""The Prox-fidelity diagnostic through `snakemake` on a tiny embedded setup: one row per step per
run with finite values, ~0 for a run whose trained policy is its target (a step too small to
move anything: η = 1e-6, learning rate 1e-12), the exploitability report's numbers, the figure,
and the end-of-run summary.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_workflow_prox_fidelity.py
"""

import csv
import math

import pytest

from workflow_utils import dry_run, planned_jobs, snakemake, tiny_config, workflow_with_config

pytestmark = pytest.mark.slow

TINY = tiny_config(
    runs={"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 2},
          # Target Prox(SFT, 1e-6 · P(·≻SFT)) = SFT to O(1e-12); the trained policy barely moves.
          "still": {"algorithm": "ipo", "eta": 1.0e-6, "training": {"learning_rate": 1.0e-12}}},
    evaluation={"enabled": False},
)


def read(path):
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = workflow_with_config(tmp_path_factory.mktemp("prox"), TINY)
    planned = [rule for rule, _ in dry_run(directory)]
    assert planned.count("prox_fidelity") == 2 and planned.count("prox_fidelity_table") == 1  # one replicate
    assert planned.count("prox_fidelity_pooled") == 1
    result = snakemake(directory, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    directory.joinpath("snakemake.out").write_text(result.stdout + result.stderr)
    return directory


def test_one_row_per_step_per_run_with_finite_values(workdir):
    rows = read(workdir / "results/summary/prox_fidelity.tsv")
    assert [(r["run"], r["step"], r["round"], r["split"]) for r in rows] == [
        ("inpo", "1", "1", "0"), ("inpo", "2", "1", "1"), ("inpo", "3", "2", "0"), ("inpo", "4", "2", "1"),
        ("still", "1", "1", "all")]
    numbers = ("kl_to_target", "tv_to_target", "measured_exploitability", "target_exploitability",
               "analogue_exploitability", "kl_to_analogue")
    for row in rows:
        assert row["method"] == "exact" and row["loss"] == ("inpo" if row["run"] == "inpo" else "ipo")
        assert all(math.isfinite(float(row[c])) and float(row[c]) >= 0 for c in numbers), row
    still = rows[-1]
    assert float(still["kl_to_target"]) < 1e-8 and float(still["tv_to_target"]) < 1e-4
    assert float(still["measured_exploitability"]) == pytest.approx(float(still["analogue_exploitability"]), abs=1e-4)
    inpo = [r for r in rows if r["run"] == "inpo"]
    assert all(float(r["kl_to_target"]) > 1e-6 for r in inpo)  # a real step is not exact
    for run in ("inpo", "still"):
        assert len(read(workdir / f"results/runs/{run}/replicate-0/prox_fidelity.tsv")) == len([r for r in rows if r["run"] == run])


def test_measured_exploitability_is_the_exploitability_reports(workdir):
    reported = {r["run"]: float(r["exploitability"]) for r in read(workdir / "results/summary/exploitability.tsv")}
    runs = {r["run"]: r for r in read(workdir / "results/summary/prox_fidelity_runs.tsv")}
    assert set(runs) == {"inpo", "still"} and runs["inpo"]["steps"] == "4"
    for run in ("inpo", "still"):
        assert float(runs[run]["final_measured_exploitability"]) == pytest.approx(reported[run], abs=1e-4)
        assert float(runs[run]["start_exploitability"]) == pytest.approx(reported["sft"], abs=1e-4)
        assert len(runs[run]["kl_per_step"].split(",")) == int(runs[run]["steps"])


def test_the_figure_and_the_end_of_run_summary(workdir):
    assert (workdir / "results/summary/prox_fidelity.png").read_bytes()[:4] == b"\x89PNG"
    out = (workdir / "snakemake.out").read_text()
    assert "Prox fidelity: per run, median KL" in out and "median_kl_to_target" in out
    assert dry_run(workdir) == []
    result = snakemake(workdir, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-2000:]
    html = (workdir / "report.html").read_text()
    assert "prox_fidelity.png" in html and "Prox fidelity of every training step" in html


def test_a_real_judge_config_plans_no_prox_fidelity(tmp_path):
    config = tiny_config(runs=TINY["runs"], evaluation={"enabled": False},
                         judge={"type": "synthetic", "rule": "length", "length_thresholds": [4, 8]})
    directory = workflow_with_config(tmp_path, config)
    result = snakemake(directory, "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    rules = {rule for rule, _ in planned_jobs(result.stdout)}
    assert "exploitability" in rules and not {"prox_fidelity", "prox_fidelity_table"} & rules
