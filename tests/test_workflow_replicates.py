"""Replicates through `snakemake` on a tiny embedded setup (one INPO run, one round, one split):
two replicates differ where they vary (SFT weights, samples, oracle coins), the pooled tables
are the means of the per-replicate ones, and a third replicate plans only its own jobs and
leaves replicate 0's and 1's files as they were (sha256 before and after).

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_workflow_replicates.py
"""

import csv
import hashlib
import math
import statistics

import pyarrow.parquet as pq
import pytest
import yaml

from linepo.workflow.config import validate_config
from linepo.workflow.plan import build_plan
from workflow_utils import dry_run, edit_config, snakemake, tiny_config, workflow_with_config

pytestmark = pytest.mark.slow

TINY = tiny_config(
    runs={"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 1}},
    prompts={"source": "embedded", "max_prompts": 12, "num_splits": 1, "seed": 0},
    eval_prompts={"source": "embedded", "max_prompts": 8},
    evaluation={"enabled": False},
    replicates={"count": 2},  # vary: sft, sampling, judging (all of them)
)
#: Outputs that pool every replicate: rewritten when one is added.
POOLED = {"results/summary/exploitability.tsv", "results/summary/prox_fidelity.tsv",
          "results/summary/prox_fidelity_runs.tsv", "results/summary/prox_fidelity.png", "results/.linepo-config.json"}


def read(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def plan_of(workdir):
    return build_plan(validate_config(yaml.safe_load((workdir / "config.yaml").read_text())))


def sha256_tree(root):
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mean_and_se(values):
    values = [float(v) for v in values]
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = workflow_with_config(tmp_path_factory.mktemp("replicates"), TINY)
    result = snakemake(directory, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    directory.joinpath("snakemake.out").write_text(result.stdout + result.stderr)
    return directory


def test_two_replicates_differ_in_their_sft_samples_and_coins(workdir):
    plan = plan_of(workdir)
    sfts = [workdir / plan.policy_dir(plan.sfts[r]) / "model.safetensors" for r in (0, 1)]
    assert sfts[0].read_bytes() != sfts[1].read_bytes()
    samples = [next(s for s, node in plan.samples.items() if node.policy == plan.sfts[r]) for r in (0, 1)]
    responses = [pq.read_table(workdir / plan.samples_path(s)).column("response").to_pylist() for s in samples]
    assert len(responses[0]) == len(responses[1]) == 12 * 3 and responses[0] != responses[1]
    prefs = [next(p for p, node in plan.prefs.items() if node.sample == s) for s in samples]
    outcomes = [pq.read_table(workdir / plan.prefs_path(p, "judgments")).column("outcome").to_pylist() for p in prefs]
    assert outcomes[0] != outcomes[1]
    for r in (0, 1):
        steps = read(workdir / f"results/runs/inpo/replicate-{r}/steps.tsv")
        assert [row["policy"] for row in steps] == [plan.policy_dir(plan.final_policy("inpo", r))]


def test_the_pooled_tables_are_the_means_of_the_per_replicate_ones(workdir):
    per = [{row["run"]: row for row in read(workdir / f"results/summary/replicates/exploitability-{r}.tsv")}
           for r in (0, 1)]
    plan = plan_of(workdir)
    assert per[1]["sft"]["policy"] == plan.policy_dir(plan.sfts[1]) != per[0]["sft"]["policy"]
    pooled = {row["run"]: row for row in read(workdir / "results/summary/exploitability.tsv")}
    assert set(pooled) == {"sft", "inpo"}
    for run, row in pooled.items():
        mean, se = mean_and_se(t[run]["exploitability"] for t in per)
        assert row["replicates"] == "2" and float(row["exploitability"]) == pytest.approx(mean, abs=5.1e-5)
        assert float(row["exploitability_se"]) == pytest.approx(se, abs=5.1e-5)
    runs = [read(workdir / f"results/summary/replicates/prox_fidelity_runs-{r}.tsv")[0] for r in (0, 1)]
    (fidelity,) = read(workdir / "results/summary/prox_fidelity_runs.tsv")
    for number in ("median_kl_to_target", "final_measured_exploitability", "final_analogue_exploitability"):
        mean, se = mean_and_se(row[number] for row in runs)
        assert float(fidelity[number]) == pytest.approx(mean, rel=1e-5)
        assert float(fidelity[f"{number}_se"]) == pytest.approx(se, rel=1e-5)
    out = (workdir / "snakemake.out").read_text()
    assert "means over 2 replicates" in out and "exploitability_se" in out


def test_a_third_replicate_plans_only_its_jobs_and_leaves_the_others_files_alone(workdir):
    before = sha256_tree(workdir / "results")
    two = plan_of(workdir)
    edit_config(workdir, lambda c: c["replicates"].update(count=3))
    three = plan_of(workdir)
    new = ({*three.policies, *three.samples, *three.prefs, *three.scored}
           - {*two.policies, *two.samples, *two.prefs, *two.scored})
    jobs = dry_run(workdir)
    rules = [rule for rule, _ in jobs]
    assert sorted(rules) == sorted(["sft_embedded", "sample", "judge", "pairs", "score", "train", "exploitability",
                                    "exploitability", "prox_fidelity", "run_steps", "exploitability_table",
                                    "prox_fidelity_table", "exploitability_pooled", "prox_fidelity_pooled", "all"])
    for rule, wildcards in jobs:
        ids = {wildcards[k] for k in ("sft", "sample", "prefs", "scored", "policy") if k in wildcards}
        assert ids <= new, (rule, wildcards)
        assert wildcards.get("replicate", "2") == "2", (rule, wildcards)

    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = sha256_tree(workdir / "results")
    changed = {path for path, digest in before.items() if after.get(path) != digest}
    assert changed <= POOLED, sorted(changed - POOLED)
    assert "results/runs/inpo/replicate-2/steps.tsv" in after and len(read(
        workdir / "results/summary/replicates/exploitability-2.tsv")) == 2
    assert {row["replicates"] for row in read(workdir / "results/summary/exploitability.tsv")} == {"3"}
    assert dry_run(workdir) == []

    edit_config(workdir, lambda c: c["replicates"].update(count=2))  # back to two: only the pooling again
    assert sorted(rule for rule, _ in dry_run(workdir)) == ["all", "exploitability_pooled", "prox_fidelity_pooled"]
