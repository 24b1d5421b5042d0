"""The workflow through `--profile profiles/slurm` on a real single-node SLURM cluster.

tests/slurm/cluster.sh starts munged, slurmctld and slurmd (Debian's packages, as root,
two simulated GPUs); the workflow runs with the profile users get plus the CI overlay
tests/slurm/profile (squeue status checks, a 2 s first check, SLURM logs kept), next to a
local run (warm jobs) that must give the same bytes. Skipped
where SLURM cannot be started: not root, the daemons or the slurm extra not installed, or
a SLURM of the machine's own configured in /etc/slurm (.ci/run sets LINEPO_REQUIRE_SLURM,
which turns those skips into failures).

    HF_HUB_OFFLINE=1 python3 -m pytest -q tests/test_slurm.py     # ~3 min on 2 cores
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow_utils import REPO, copy_workflow, planned_jobs, tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = REPO / "tests/slurm/cluster.sh"
OVERLAY = REPO / "tests/slurm/profile"
PROFILE = ["--profile", "profiles/slurm", "--workflow-profile", str(OVERLAY)]
# Rules that load a model: they must run as cluster jobs, never locally. (eval_compare_batch is
# local with the synthetic judge, by design: numpy only.)
COMPUTE_RULES = {"sft_embedded", "sample", "judge", "pairs", "score", "train", "exploitability", "eval_generate"}

# The embedded default, tiny: one INPO round over 2 splits. Training asks for one GPU, so
# the train jobs go through SLURM's GPU scheduling (the profile's gpu_model and cpus_per_gpu).
TINY = tiny_config(**{
    "resources": {"train": {"gpu": 1}},
    "evaluation": {"curves": False},  # one SLURM job fewer; the final policies are still evaluated
    "runs": {"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 1}},
})


def why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install munge slurmctld slurmd slurm-client)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed (pip install 'linepo[slurm]')"
    etc_conf = Path("/etc/slurm/slurm.conf")
    if etc_conf.exists() and not etc_conf.is_symlink():
        return "this machine has a SLURM of its own (/etc/slurm/slurm.conf)"
    return None


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Start the cluster; yield the environment that reaches it; stop it."""
    reason = why_no_slurm()
    if reason and os.environ.get("LINEPO_REQUIRE_SLURM"):  # .ci/run: SLURM must run there
        pytest.fail(f"LINEPO_REQUIRE_SLURM is set, but SLURM cannot be started: {reason}")
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        ready = subprocess.run([str(CLUSTER), "check", str(state)], capture_output=True, text=True, timeout=60)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "HF_HUB_OFFLINE": "1"}
    finally:
        subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, timeout=60)


def run(args, cwd, env, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def slurm_jobs(workdir: Path) -> dict[str, str]:
    """SLURM job id → rule, from the plugin's kept logs .snakemake/slurm_logs/rule_<rule>/.../<id>.log."""
    jobs = {}
    for log in (workdir / ".snakemake/slurm_logs").rglob("*.log"):
        rule_dir = next(part for part in log.relative_to(workdir / ".snakemake/slurm_logs").parts if part.startswith("rule_"))
        jobs[log.stem] = rule_dir.removeprefix("rule_")
    return jobs


def scontrol_job(job_id: str, env) -> dict[str, str]:
    """slurmctld's record of a (finished) job: JobState, Comment, TRES, ExitCode, ..."""
    shown = run(["scontrol", "show", "job", "--oneliner", job_id], cwd=None, env=env, timeout=30)
    assert shown.returncode == 0, shown.stderr
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def sha256_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_workflow(directory: Path) -> Path:
    directory.mkdir(parents=True)
    copy_workflow(directory)
    (directory / "config.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    return directory


def test_the_tiny_workflow_runs_every_non_local_job_on_slurm_and_matches_a_local_run(slurm_env, tmp_path):
    on_slurm = tiny_workflow(tmp_path / "slurm")
    local = tiny_workflow(tmp_path / "local")
    plan = run(["snakemake", "-n", *PROFILE], cwd=on_slurm, env=slurm_env)
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = Counter(rule for rule, _ in planned_jobs(plan.stdout))

    # The local reference run shares the CPUs with the SLURM run, which mostly waits on polls.
    reference = subprocess.Popen(["snakemake", "--cores", "1"], cwd=local, env=slurm_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = run(["snakemake", *PROFILE], cwd=on_slurm, env=slurm_env)
    reference_log, _ = reference.communicate(timeout=900)
    assert reference.returncode == 0, reference_log[-3000:]
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]

    # Every job ran either where snakemake runs (declared local: `localrule x:` in its log)
    # or as a SLURM job (its log kept by the plugin under the rule's name), and the stages
    # that load a model are never local.
    local_jobs = Counter(re.findall(r"^localrule (\w+):$", output, re.MULTILINE))
    jobs = slurm_jobs(on_slurm)
    assert Counter(jobs.values()) + local_jobs == planned, (jobs, local_jobs, planned)
    assert not set(local_jobs) & COMPUTE_RULES, local_jobs
    assert COMPUTE_RULES <= set(jobs.values())
    assert {"prompt_splits", "eval_prompts", "run_steps"} <= set(local_jobs)

    # slurmctld's record of each: COMPLETED, the rule in its comment, the resources asked for.
    for job_id, rule in jobs.items():
        record = scontrol_job(job_id, slurm_env)
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", (rule, record)
        assert record["Comment"].startswith(f"rule_{rule}"), record["Comment"]
        assert record["Partition"] == "gpu"
        if rule == "train":  # resources.train.gpu = 1 of the config, gpu_model and cpus_per_gpu of the profile
            assert record["TresPerJob"] == "gres:gpu:a100:1" and record["CpusPerTres"] == "gres:gpu:8", record
            assert "cpu=8," in record["TRES"], record["TRES"]
            assert record["TimeLimit"] == "02:00:00"  # resources.train.runtime, first attempt
        else:  # CPU jobs: no GPU asked for (the embedded default's stages ask for none)
            assert "gpu" not in record.get("TresPerJob", ""), (rule, record)

    # Under the SLURM executor no warm-job server starts (its jobs run on other hosts; the
    # local rules run cold); the local reference ran warm: its model jobs forked from it.
    assert not (on_slurm / ".snakemake/linepo-warm.log").exists()
    served = re.findall(r"\] \d+ \['(\S+)'\] -> 0 in ", (local / ".snakemake/linepo-warm.log").read_text())
    assert {"sample", "judge", "score", "train"} <= set(served), served

    # Same results, byte for byte (policies' safetensors, every parquet, the tables): the
    # SLURM jobs' cold processes and the local run's warm forks agree.
    assert (on_slurm / "results/summary/exploitability.tsv").exists()
    assert sha256_tree(on_slurm / "results") == sha256_tree(local / "results")


def test_a_failing_job_fails_the_workflow_naming_its_rule_and_retries_resubmit_it(slurm_env, tmp_path):
    workdir = tmp_path / "retry"
    workdir.mkdir()
    shutil.copy(REPO / "tests/slurm/retry/Snakefile", workdir / "Snakefile")
    shutil.copytree(REPO / "profiles", workdir / "profiles")
    result = run(["snakemake", *PROFILE, "--retries", "1", "--keep-going"], cwd=workdir, env=slurm_env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Error in rule broken" in output and "Error in rule flaky" in output

    # flaky: failed once, resubmitted as a new SLURM job with twice the runtime, then done.
    assert (workdir / "flaky.txt").read_text() == "ok\n"
    attempts = [line.split("\t") for line in (workdir / "attempts-flaky.tsv").read_text().splitlines()]
    assert [runtime for runtime, _, _ in attempts] == ["5", "10"]
    assert all(gpu in ("0", "1") for _, _, gpu in attempts), attempts  # one simulated GPU each time
    first, second = (job_id for _, job_id, _ in attempts)
    assert first != second and first.isdigit() and second.isdigit()
    assert scontrol_job(first, slurm_env)["JobState"] == "FAILED"
    assert scontrol_job(second, slurm_env)["JobState"] == "COMPLETED"
    # broken: both attempts ran on SLURM and failed; the workflow reports it and its SLURM log.
    broken = [line.split("\t") for line in (workdir / "attempts-broken.tsv").read_text().splitlines()]
    assert len(broken) == 2 and all(scontrol_job(job_id, slurm_env)["JobState"] == "FAILED" for _, job_id in broken)
    assert not (workdir / "broken.txt").exists()
    assert "broken: failing on purpose" in output  # show-failed-logs prints the job's log
