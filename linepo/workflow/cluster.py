"""What each stage's job asks a scheduler for, from the config's ``resources`` section.

The model sizes decide GPU counts, memory and wall time, so they live in the experiment's
config (``configs/paper.yaml`` asks for GPUs; the embedded default for none), and the rules
read them; ``profiles/slurm`` adds what the cluster decides (partition, account, CPUs per
GPU, and the GPU model, which it passes in as ``resources.gpu_model`` of the config). Wall
time grows with each retry (``snakemake --retries N``): attempt k asks for k × ``runtime``
minutes.

    python -c "from linepo.workflow.config import load_config; from linepo.workflow.cluster import stage_resources; \
print(stage_resources(load_config('configs/paper.yaml'), 'train'))"
"""

from __future__ import annotations

from typing import Callable

from linepo.errors import InputError

#: The stages whose jobs the config sizes (rule → stage: sample, judge, score, train; the
#: evaluation rules that load a policy or a judge → evaluate).
STAGES = ("sample", "judge", "score", "train", "evaluate")


def runtime_per_attempt(minutes: int) -> Callable[..., int]:
    """A Snakemake resource callable: ``minutes`` on the first attempt, k × ``minutes`` on the k-th."""

    def runtime(wildcards, attempt: int) -> int:
        return minutes * attempt

    return runtime


def stage_resources(config: dict, stage: str) -> dict:
    """``gpu``, ``mem_mb``, ``runtime`` (a callable of the attempt) and, for a GPU job where
    ``resources.gpu_model`` is set, ``gpu_model``, for a stage's rule.

    Use as ``resources: **RESOURCES["train"]`` in a rule (rules/common.smk builds RESOURCES).
    The GPU model comes with GPU jobs only: the SLURM plugin turns ``gpu_model`` without
    ``gpu`` into one GPU, and ``gpu=0`` with a model into ``--gpus=<model>:0``, which the
    job's own ``srun`` then rejects.

    Raises:
        InputError: for a stage the config has no resources for.
    """
    if stage not in STAGES:
        raise InputError(f"config key resources.{stage}: no such stage (one of {', '.join(STAGES)})")
    spec = config["resources"][stage]
    resources = {"gpu": spec["gpu"], "mem_mb": spec["mem_mb"], "runtime": runtime_per_attempt(spec["runtime"])}
    if spec["gpu"] > 0 and config["resources"].get("gpu_model"):
        resources["gpu_model"] = config["resources"]["gpu_model"]
    return resources


def check_resources(config: dict) -> None:
    """What the schema cannot say: GPU counts that cannot hold what the config asks for.

    Raises:
        InputError: "config key resources.<stage>.gpu: ..." when a GPU stage asks for fewer
            GPUs than its tensor parallelism needs.
    """
    section = config["resources"]
    tensor_parallel = config["sampling"].get("tensor_parallel_size", 1)
    gpus = section["sample"]["gpu"]
    if config["sampling"].get("backend") == "vllm" and gpus and gpus < tensor_parallel:
        raise InputError(
            f"config key resources.sample.gpu: {gpus} GPU(s) cannot hold sampling.tensor_parallel_size "
            f"{tensor_parallel} (ask for at least {tensor_parallel}, or 0 to leave GPUs to the profile)"
        )
