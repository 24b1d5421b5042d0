"""The LLM workflow end to end on a tiny embedded setup, via the `snakemake` command line.

Asserts what config changes replan (from `snakemake -n`), and that a run killed with
SIGKILL mid-training resumes from its side checkpoint and ends byte-identical to an
uninterrupted run.
"""

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from workflow_utils import dry_run, edit_config, snakemake, tiny_config, workflow_with_config

pytestmark = pytest.mark.slow

TINY = tiny_config(**{
    "runs": {"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 2}},
})
DATA_RULES = {"sample", "judge", "pairs", "score", "train"}


def tiny_workflow(directory: Path, **overrides) -> Path:
    return workflow_with_config(directory, {**yaml.safe_load(yaml.safe_dump(TINY)), **overrides})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = tiny_workflow(tmp_path_factory.mktemp("llm"))
    result = snakemake(directory, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return directory


def test_the_tiny_experiment_runs_and_reports_exploitability(workdir):
    table = (workdir / "results/summary/exploitability.tsv").read_text().splitlines()
    assert table[0].startswith("run\texploitability")
    assert {line.split("\t")[0] for line in table[1:]} == {"sft", "inpo"}
    steps = (workdir / "results/runs/inpo/replicate-0/steps.tsv").read_text().splitlines()
    assert len(steps) == 1 + 2 * 2  # header + rounds × splits
    assert dry_run(workdir) == []  # a second invocation has nothing to do


def test_every_model_made_artefact_records_one_numerics_environment(workdir):
    from linepo import numerics

    from linepo.provenance import PROVENANCE_FILE

    results = workdir / "results"
    artefacts = [*results.rglob("*.parquet"), *(p.parent for p in results.rglob(PROVENANCE_FILE))]
    artefacts = [a for a in artefacts if not any(part.startswith(".") or part.endswith(".partial")
                                                 for part in a.relative_to(results).parts)]
    # policy folders, samples and scored pairs: a model computed them (judging by the oracle did not)
    made_by_models = [a for a in artefacts if a.is_dir() or {"samples", "scored"} & set(a.parts)]
    assert made_by_models and all(numerics.recorded(a) for a in made_by_models)
    reports = [p for p in (workdir / "results").rglob("*.json") if '"exploitability"' in p.read_text()]
    assert reports and all(numerics.recorded(r) for r in reports)
    assert numerics.summary(artefacts + reports).startswith("Computed with torch ")


def test_an_eval_only_change_plans_no_data_or_training_jobs(workdir):
    edit_config(workdir, lambda c: c["eval_prompts"].update(max_prompts=8))
    try:
        jobs = dry_run(workdir)
        assert jobs and not {rule for rule, _ in jobs} & DATA_RULES
        assert {"eval_prompts", "exploitability"} <= {rule for rule, _ in jobs}
    finally:
        edit_config(workdir, lambda c: c["eval_prompts"].update(max_prompts=16))
    assert dry_run(workdir) == []


def test_a_round_2_change_plans_round_2_only_and_reverting_plans_nothing(workdir):
    edit_config(workdir, lambda c: c["runs"]["inpo"].update(round_overrides={"2": {"eta": 5.0}}))
    jobs = dry_run(workdir)
    data_jobs = [(rule, w) for rule, w in jobs if rule in DATA_RULES]
    assert data_jobs and all(w["round"] == "2" for _, w in data_jobs)
    # Round 2 starts from round 1's last policy: its first samples are already there.
    assert ("sample", {"round": "2", "split": "0"}) not in [(r, {k: w[k] for k in ("round", "split")}) for r, w in data_jobs]
    edit_config(workdir, lambda c: c["runs"]["inpo"].pop("round_overrides"))
    assert dry_run(workdir) == []


def test_adding_linepo_next_to_inpo_plans_only_the_steps_after_the_reference_move(workdir):
    linepo = {"algorithm": "linepo", "eta": 4.0, "eta_tau": 0.6, "rounds": 2, "reference_moves": "every_round"}
    edit_config(workdir, lambda c: c["runs"].update(linepo=linepo))
    try:
        jobs = dry_run(workdir)
        data_jobs = [(rule, w) for rule, w in jobs if rule in DATA_RULES]
        assert data_jobs and all(w["round"] == "2" for _, w in data_jobs)
        trains = sorted(w["split"] for rule, w in data_jobs if rule == "train")
        assert trains == ["0", "1"]
    finally:
        edit_config(workdir, lambda c: c["runs"].pop("linepo"))


def sha256_tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``, hidden files and empty folders included (a leftover temporary shows)."""
    return {str(p.relative_to(root)): "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


#: the names of linepo's temporaries (linepo.schemas.remove_stale_temporaries)
TEMPORARY = re.compile(r"^\..+\.(?:[a-z0-9_]{8}\.tmp|old-[0-9]+|shards-[a-z0-9_]{8}|saving)$")


def test_sigkill_mid_training_then_rerun_incomplete_matches_an_uninterrupted_run(tmp_path):
    """Also: a second run is refused while the first holds the lock; the killed job's stale
    temporaries are removed by its rerun; the reference runs with --cores 2, the interrupted
    run with --cores 1 (the same bytes either way)."""
    # Long enough training (many 1-pair steps, a checkpoint after each) to be killed mid-way.
    overrides = {"training": {"epochs": 6, "batch_size": 1, "learning_rate": 5.0e-4, "save_steps": 2},
                 "runs": {"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 1}}}
    reference = tiny_workflow(tmp_path / "reference", **overrides)
    interrupted = tiny_workflow(tmp_path / "interrupted", **overrides)
    target = "results/runs/inpo/replicate-0/steps.tsv"
    assert snakemake(reference, target, "--cores", "2").returncode == 0

    process = subprocess.Popen(["snakemake", target, "--cores", "1"], cwd=interrupted,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not list(interrupted.glob(".snakemake/locks/*")):
        assert process.poll() is None and time.time() < deadline, "the run never locked its directory"
        time.sleep(0.2)
    second = snakemake(interrupted, target, "--cores", "1")  # a concurrent run of the same jobs: refused
    assert second.returncode != 0 and "cannot be locked" in second.stdout + second.stderr, second.stderr[-2000:]
    assert process.poll() is None, "the first run ended while the second was refused"
    while time.time() < deadline:
        states = list(interrupted.glob("results/policies/r1/s0/*/model.partial/checkpoint-*/trainer_state.json"))
        if states:
            break
        assert process.poll() is None, "the run ended before a training checkpoint appeared"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not list(interrupted.glob("results/policies/r1/s1/*/model"))
    # What a kill inside that job's save_policy leaves (tests/test_faults.py makes them for real).
    killed = next(interrupted.glob("results/policies/r1/s0/*/model.partial")).parent
    (killed / ".model.k1ll3d_x.tmp").mkdir()
    (killed / ".model.k1ll3d_x.tmp" / "model.safetensors").write_bytes(b"\0" * 2**20)
    (killed / ".model.old-4242").mkdir()

    # What a user does after a kill: release Snakemake's lock, then rerun the incomplete job.
    assert snakemake(interrupted, "--unlock").returncode == 0
    result = snakemake(interrupted, target, "--cores", "1", "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-3000:]
    log = next(interrupted.glob("logs/policies/r1/s0/*.log")).read_text()
    resumed = int(log.split("(resumed at ")[1].split(")")[0])
    assert resumed > 0, log[-2000:]
    stale = killed.relative_to(interrupted) / ".model.k1ll3d_x.tmp"  # the job's --out is relative
    assert f"removed stale temporary {stale} (left by a killed job)" in log, log[-2000:]
    assert sha256_tree(interrupted / "results") == sha256_tree(reference / "results")
    assert not list(interrupted.glob("results/policies/**/model.partial"))
    assert not [p for p in interrupted.rglob("*") if TEMPORARY.match(p.name)]


def test_validation_pairs_are_their_own_nodes_and_pick_each_steps_checkpoint(tmp_path):
    """validation.enabled: every step samples, judges and scores held-out prompts with the policy
    being updated (split "val"), and its trainer keeps the lowest-validation-loss checkpoint."""
    overrides = {"validation": {"enabled": True, "prompts": {"source": "embedded", "split": "eval", "max_prompts": 8},
                                "eval_steps": 1},
                 "runs": {"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 1}},
                 "evaluation": {"enabled": False}}
    directory = tiny_workflow(tmp_path / "validated", **overrides)
    jobs = dry_run(directory)
    val_jobs = sorted((rule, w["split"]) for rule, w in jobs if w.get("split") == "val")
    assert val_jobs == sorted([(rule, "val") for rule in ("sample", "judge", "pairs", "score") for _ in range(2)])
    assert ("validation_prompts", {"prompts": next(w["prompts"] for r, w in jobs if r == "validation_prompts")}) in jobs
    result = snakemake(directory, "results/runs/inpo/replicate-0/steps.tsv", "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for model in sorted(directory.glob("results/policies/r1/s*/*/model")):
        summary = yaml.safe_load((model / "linepo_selection.json").read_text())
        losses = dict(summary["history"])
        assert summary["select_best"] and summary["selected_step"] == min(losses, key=losses.get)
        assert summary["final_step"] == max(losses)  # the last step is always a candidate
    assert len(list(directory.glob("results/scored/r1/sval/*.parquet"))) == 2
    again = snakemake(directory, "-n", "results/runs/inpo/replicate-0/steps.tsv")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
