"""Fixed-path outputs (issue 12, item 10): results/runs/<run>/steps.tsv, results/summary/,
results/eval/alpaca_eval/<checkpoint>/ and results/synthetic/<setting>/ are named by config
names, so a second config in one working directory overwrites them. results/.linepo-config.json
records which config wrote each; planning another config warns, rerunning the same one does not."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import yaml
from workflow_utils import REPO, edit_config, workflow_with_config

from linepo.workflow.config import validate_config
from linepo.workflow.preflight import (
    MARKER,
    config_switch_warning,
    fixed_outputs,
    outputs_to_run,
    record_outputs,
    switched_outputs,
)
from linepo.workflow.wiring import Wiring

BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def wiring(edit=lambda c: None) -> Wiring:
    config = copy.deepcopy(BASE)
    edit(config)
    return Wiring(validate_config(config))


def write_outputs(paths):
    for path in paths:
        target = Path(path) / "model_outputs.json" if path.endswith("/") else Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x")


def test_the_default_config_names_its_fixed_path_outputs():
    outputs = fixed_outputs(wiring())
    assert {"results/runs/inpo/replicate-0/steps.tsv", "results/summary/", "results/eval/alpaca_eval/inpo_r2/",
            "results/synthetic/paper_exact/", "results/runs/inpo/replicate-0/prox_fidelity.tsv",
            "results/summary/prox_fidelity.tsv"} <= set(outputs)
    assert fixed_outputs(wiring()) == outputs  # a digest of the config, nothing else
    # Execution keys and resources change how jobs run, not what they write.
    assert fixed_outputs(wiring(lambda c: c.update(resources={"train": {"gpu": 1, "mem_mb": 16000},
                                                              "sample": {"gpu": 2}}))) == outputs


def test_a_config_switch_warns_and_a_rerun_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = wiring()
    write_outputs(fixed_outputs(first))
    assert config_switch_warning(first) is None  # nothing recorded yet: nothing to compare
    record_outputs(first)
    assert config_switch_warning(first) is None  # the same config again

    other = wiring(lambda c: c["runs"]["dpo"].update(eta=8.0))
    switched = switched_outputs(other)
    # DPO's own steps, the summary tables and its AlpacaEval export; not the other runs' steps.
    assert {"results/runs/dpo/replicate-0/steps.tsv", "results/summary/", "results/eval/alpaca_eval/dpo/"} <= set(switched)
    assert "results/runs/inpo/replicate-0/steps.tsv" not in switched and "results/synthetic/paper_exact/" not in switched
    assert {"results/runs/dpo/replicate-0/prox_fidelity.tsv", "results/summary/prox_fidelity.tsv"} <= set(switched)
    assert "results/runs/inpo/replicate-0/prox_fidelity.tsv" not in switched
    line = config_switch_warning(other)
    assert line.startswith(f"linepo: warning: {MARKER}: another config wrote results/runs/dpo/replicate-0/steps.tsv, ")
    assert line.endswith("; running this config overwrites them (use a separate working directory for each config)")
    assert "\n" not in line

    # Jobs of the other config rewrite DPO's steps only: that one is recorded as its now.
    record_outputs(other, written=["results/runs/dpo/replicate-0/steps.tsv", "results/policies/r1/sall/abc/model"])
    assert "results/runs/dpo/replicate-0/steps.tsv" not in switched_outputs(other)
    assert "results/runs/dpo/replicate-0/steps.tsv" in switched_outputs(first)
    assert "results/summary/" in switched_outputs(other)


def test_outputs_that_are_gone_are_not_warned_about(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record_outputs(wiring())
    assert config_switch_warning(wiring(lambda c: c["runs"]["dpo"].update(eta=8.0))) is None  # no file exists
    recorded = json.loads(Path(MARKER).read_text())["outputs"]
    assert recorded == fixed_outputs(wiring())


def test_jobs_that_write_no_fixed_path_output_record_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record_outputs(wiring(), written=["results/samples/r1/s0/abc.parquet"])
    assert not Path(MARKER).exists()
    assert outputs_to_run(object()) is None  # a DAG it cannot read: every output is recorded


# ----------------------------------------------------------------------------- through snakemake

TINY = {"synthetic": {"settings": {"tiny": {"algorithms": ["md"], "iterations": 5}}}}


def snakemake(workdir, *args):
    env = {k: v for k, v in os.environ.items() if k != "LINEPO_SKIP_ENV_CHECKS"}
    return subprocess.run(["snakemake", *args], cwd=workdir, capture_output=True, text=True, timeout=600, env=env)


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("linepo: warning:")]


def test_snakemake_warns_when_another_config_would_overwrite_and_records_only_when_jobs_run(tmp_path):
    workdir = workflow_with_config(tmp_path / "work", TINY)
    assert not warnings(snakemake(workdir, "-n"))
    assert not (workdir / MARKER).exists()  # a dry run writes nothing
    result = snakemake(workdir, "--cores", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = (workdir / MARKER).read_text()
    assert "results/synthetic/tiny/" in json.loads(recorded)["outputs"]
    assert not warnings(snakemake(workdir, "-n"))  # the same config again

    edit_config(workdir, lambda c: c["synthetic"]["settings"]["tiny"].update(iterations=6))
    result = snakemake(workdir, "-n")
    assert result.returncode == 0
    assert warnings(result) == [f"linepo: warning: {MARKER}: another config wrote results/synthetic/tiny/; running "
                                "this config overwrites them (use a separate working directory for each config)"]
    assert (workdir / MARKER).read_text() == recorded  # planning changed nothing

    result = snakemake(workdir, "--cores", "1")  # a deliberate switch: warned, not stopped
    assert result.returncode == 0 and len(warnings(result)) == 1, result.stderr[-2000:]
    assert (workdir / MARKER).read_text() != recorded
    assert not warnings(snakemake(workdir, "-n"))
