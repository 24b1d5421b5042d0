"""Run the Snakemake workflow from a temporary copy of the repository, as a user would."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "rules", "profiles", "config.yaml", "configs", "report"]

#: The embedded default shrunk to seconds per job: the base config of the workflow tests.
TINY_BASE = {
    "synthetic": {"settings": {}},
    "policy": {"sft": "embedded", "embedded": {"steps": 40, "seed": 0}},
    "prompts": {"source": "embedded", "max_prompts": 24, "num_splits": 2, "seed": 0},
    "eval_prompts": {"source": "embedded", "max_prompts": 16},
    "sampling": {"n": 3, "max_new_tokens": 12, "batch_size": 32, "temperature": 1.0},
    "judge": {"type": "synthetic"},
    "preferences": {"selection": "all_pairs"},
    "training": {"epochs": 1, "batch_size": 8, "learning_rate": 5.0e-4, "save_steps": 1},
}


def default_realisation() -> dict:
    """config.yaml without its ``replicates:`` section: one realisation of the default, whose
    node counts and ids tests compare (the default itself runs two replicates)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.pop("replicates", None)
    return config


def default_config_with(replicates=None, edit=None) -> dict:
    """The validated :func:`default_realisation` with ``replicates`` set and ``edit(config)`` applied."""
    from linepo.workflow.config import validate_config

    config = default_realisation()
    if replicates is not None:
        config["replicates"] = replicates
    if edit:
        edit(config)
    return validate_config(config)


def tiny_config(**sections) -> dict:
    """A deep copy of :data:`TINY_BASE` with whole top-level ``sections`` replaced or added."""
    return {**yaml.safe_load(yaml.safe_dump(TINY_BASE)), **sections}


def validated_tiny(runs: dict, **sections) -> dict:
    """The validated :func:`tiny_config` with these ``runs`` (deep-copied) and ``sections``."""
    import copy

    from linepo.workflow.config import validate_config

    raw = tiny_config(runs=copy.deepcopy(runs))
    raw.update(sections)
    return validate_config(raw)


#: The training positions of a 2-round × 2-split schedule: step t = 0..3 as (round, split s_t).
TWO_BY_TWO_POSITIONS = [(1, "0"), (1, "1"), (2, "0"), (2, "1")]


def two_split_plan(runs: dict):
    """The plan of :func:`validated_tiny` with these runs (2 prompt splits)."""
    from linepo.workflow.plan import build_plan

    plan = build_plan(validated_tiny(runs))
    assert plan.num_splits == 2
    return plan


def step_nodes(plan, step) -> tuple:
    """A training step's (policy node, scored node, prefs id, sample node) in the plan."""
    node = plan.policies[step.policy]
    scored = plan.scored[node.scored[0]]
    (pref_id,) = scored.prefs
    return node, scored, pref_id, plan.samples[plan.prefs[pref_id].sample]


def copy_workflow(destination: Path) -> Path:
    """Copy the workflow files (not results) into ``destination``; returns it."""
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        elif source.exists():
            shutil.copy2(source, destination / name)
    return destination


def workflow_with_config(directory: Path, config: dict) -> Path:
    """A copy of the workflow in ``directory`` (created if needed) whose config.yaml is ``config``."""
    directory.mkdir(parents=True, exist_ok=True)
    copy_workflow(directory)
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


def snakemake(workdir: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=workdir, capture_output=True, text=True, timeout=timeout)


def dry_run(workdir: Path) -> list[tuple[str, dict]]:
    """The jobs ``snakemake -n`` plans in ``workdir`` (it must succeed)."""
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    return planned_jobs(result.stdout)


def planned_jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job that ``snakemake -n`` plans."""
    jobs = []
    for block in re.split(r"^(?=rule \w+:$)", output, flags=re.MULTILINE)[1:]:
        rule = block.split(":", 1)[0].removeprefix("rule ")
        wildcards = {}
        match = re.search(r"^    wildcards: (.*)$", block, re.MULTILINE)
        if match:
            wildcards = dict(item.split("=", 1) for item in match.group(1).split(", "))
        jobs.append((rule, wildcards))
    return jobs


def edit_config(workdir: Path, edit) -> None:
    """Apply ``edit(config_dict)`` to the copied config.yaml."""
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
