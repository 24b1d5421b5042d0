"""`snakemake synthetic` end to end in a temporary copy of the workflow."""

import csv

import pytest

from workflow_utils import copy_workflow, edit_config, planned_jobs, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = copy_workflow(tmp_path_factory.mktemp("wf"))
    result = snakemake(directory, "synthetic", "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return directory


def summary(workdir, setting):
    with open(workdir / f"results/synthetic/{setting}/summary.tsv") as handle:
        return {row["algorithm"]: float(row["duality_gap"]) for row in csv.DictReader(handle, delimiter="\t")}


def test_default_settings_reproduce_figures_1_and_2(workdir):
    exact = summary(workdir, "paper_exact")
    assert exact["linepo"] <= 1e-4 and exact["md"] >= 0.1
    assert 0.03 <= exact["inpo"] and exact["omwu"] <= 1e-3 and exact["mirror_prox"] <= 1e-3
    sampled = summary(workdir, "paper_sampled")
    assert sampled["linepo_sampled"] <= 0.02
    assert min(sampled["iter_dpo"], sampled["iter_ipo"], sampled["sppo"]) >= 0.1
    for setting in ["paper_exact", "paper_sampled"]:
        figure = workdir / f"results/synthetic/{setting}/figure.png"
        assert figure.read_bytes()[:4] == b"\x89PNG"


def test_second_run_has_nothing_to_do(workdir):
    result = snakemake(workdir, "synthetic", "-n")
    assert planned_jobs(result.stdout + result.stderr) == []
    assert "Nothing to be done" in result.stdout + result.stderr


def test_a_changed_parameter_reruns_only_what_uses_it(workdir):
    # `samples` is unused by exact dynamics: nothing to rerun.
    edit_config(workdir, lambda c: c["synthetic"]["settings"]["paper_exact"].update(samples=7))
    result = snakemake(workdir, "synthetic", "-n")
    assert planned_jobs(result.stdout) == [], result.stdout
    # τ is used by INPO and LINE-PO only.
    edit_config(workdir, lambda c: c["synthetic"]["settings"]["paper_exact"].update(tau=0.2))
    jobs = planned_jobs(snakemake(workdir, "synthetic", "-n").stdout)
    trajectories = sorted(w["algorithm"] for rule, w in jobs if rule == "synthetic_trajectory")
    assert trajectories == ["inpo", "linepo"]
    assert [w["setting"] for rule, w in jobs if rule == "synthetic_figure"] == ["paper_exact"]


def test_bad_config_fails_before_planning_with_the_key(tmp_path):
    directory = copy_workflow(tmp_path)
    edit_config(directory, lambda c: c["synthetic"]["settings"]["paper_exact"].update(eta="1e-5"))
    result = snakemake(directory, "synthetic", "-n")
    assert result.returncode != 0
    assert "synthetic.settings.paper_exact.eta" in result.stderr
    edit_config(directory, lambda c: c["synthetic"]["settings"]["paper_exact"].update(
        eta=1.0, matrix=[[0.5, 0.2, 0.8], [0.9, 0.5, 0.1], [0.2, 0.9, 0.5]]))
    result = snakemake(directory, "synthetic", "-n")
    assert result.returncode != 0 and "paper_exact.matrix" in result.stderr
    assert not (directory / "results").exists()
