"""The config's `resources` section: what each stage's job asks a scheduler for."""

import copy

import pytest
import yaml

from linepo.workflow.cluster import STAGES, stage_resources
from linepo.workflow.config import load_config, validate_config
from linepo.errors import InputError
from workflow_utils import REPO

BASE = yaml.safe_load((REPO / "config.yaml").read_text())


def validated(edit):
    config = copy.deepcopy(BASE)
    edit(config)
    return validate_config(config)


def test_the_default_asks_for_no_gpus_and_runtime_grows_with_each_attempt():
    config = validated(lambda c: None)
    assert set(config["resources"]) == {*STAGES, "gpu_model"}
    train = stage_resources(config, "train")
    assert train["gpu"] == 0 and train["mem_mb"] == 8000 and "gpu_model" not in train
    assert [train["runtime"](None, attempt) for attempt in (1, 2, 3)] == [120, 240, 360]


def test_a_partial_stage_keeps_the_other_defaults():
    # data-parallel training needs per-pair batches (the default groups prompts: one process)
    config = validated(lambda c: c.update(resources={"train": {"gpu": 4}}, training={**c["training"],
                                                                              "prompts_per_batch": None}))
    assert config["resources"]["train"] == {"gpu": 4, "mem_mb": 8000, "runtime": 120}
    assert config["resources"]["sample"] == {"gpu": 0, "mem_mb": 4000, "runtime": 60}


def test_the_gpu_model_goes_to_gpu_jobs_only():
    config = validated(lambda c: c.update(resources={"gpu_model": "h100", "train": {"gpu": 2}},
                                          training={**c["training"], "prompts_per_batch": None}))
    assert stage_resources(config, "train")["gpu_model"] == "h100"
    assert "gpu_model" not in stage_resources(config, "sample")  # gpu 0: no --gpus=h100:0


def test_the_paper_config_sizes_its_models():
    config = load_config(str(REPO / "configs/paper.yaml"))
    gpus = {stage: config["resources"][stage]["gpu"] for stage in STAGES}
    assert gpus == {"sample": 1, "judge": 2, "score": 1, "train": 4, "evaluate": 1}


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c.update(resources={"train": {"gpu": -1}}), "resources.train.gpu"),
        (lambda c: c.update(resources={"train": {"gpus": 2}}), "resources.train"),
        (lambda c: c.update(resources={"judge": {"runtime": "2h"}}), "resources.judge.runtime"),
        (lambda c: c.update(resources={"sample": {"mem_mb": 0}}), "resources.sample.mem_mb"),
        (lambda c: c.update(resources={"sampler": {"gpu": 1}}), "resources"),
        (lambda c: c.update(resources={"gpu_model": "'a100'"}), "resources.gpu_model"),
        (lambda c: (c["sampling"].update(backend="vllm", tensor_parallel_size=2),
                    c.update(resources={"sample": {"gpu": 1}})), "resources.sample.gpu"),
    ],
)
def test_bad_resources_name_the_key(edit, key):
    with pytest.raises(InputError) as info:
        validated(edit)
    message = str(info.value)
    assert message.startswith(f"config key {key}") and "\n" not in message


def test_an_unknown_stage_is_an_input_error():
    with pytest.raises(InputError, match="resources.evaluation"):
        stage_resources(validated(lambda c: None), "evaluation")


def test_a_bad_resources_key_stops_snakemake_with_one_line(tmp_path):
    from workflow_utils import copy_workflow, edit_config, snakemake

    copy_workflow(tmp_path)
    edit_config(tmp_path, lambda c: c.update(resources={"train": {"gpu": -1}}))
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "linepo: config key resources.train.gpu: -1 is less than the minimum of 0" in result.stderr


def test_the_slurm_profile_plans_the_paper_config_with_its_gpus(tmp_path):
    """profiles/slurm parses, and its per-rule GPU model and CPUs join the config's GPU counts."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install 'linepo[slurm]'")
    from workflow_utils import copy_workflow, snakemake

    copy_workflow(tmp_path)
    result = snakemake(tmp_path, "-n", "--profile", "profiles/slurm", "--configfile", "configs/paper.yaml",
                       "--replace-workflow-config", "--workflow-profile", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    resources = {}
    for block in result.stdout.split("\nrule ")[1:]:
        line = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
        resources.setdefault(block.split(":", 1)[0], set(line.split(": ", 1)[1].split(", ")))
    for rule, gpus, cpus, runtime in [("train", 4, 8, 360), ("judge", 2, 8, 480), ("sample", 1, 4, 180), ("score", 1, 4, 120)]:
        expected = {f"gpu={gpus}", "gpu_model=a100", f"cpus_per_gpu={cpus}", f"runtime={runtime}", "slurm_partition=gpu"}
        assert expected <= resources[rule], (rule, resources[rule])
    assert not any(item.startswith(("gpu=", "gpu_model=")) for item in resources["pairs"])  # a CPU job
