# Config validation and helpers shared by all rule files. Logic lives in linepo/.
import sys

from linepo.workflow.config import validate_config
from linepo.errors import InputError

try:
    config = validate_config(config)
except InputError as err:
    # One clear line and a non-zero exit before any job is planned.
    print(f"linepo: {err}", file=sys.stderr)
    sys.exit(1)

WILDCARD_NAME = "[A-Za-z0-9_]+"

# Per-stage job resources from config["resources"] (gpu, mem_mb, runtime growing with each
# retry, the GPU model for GPU jobs): a rule asks for them with `resources: **RESOURCES["train"]`;
# profiles/slurm adds partition, account and CPUs per GPU.
from linepo.workflow.cluster import STAGES, stage_resources

RESOURCES = {stage: stage_resources(config, stage) for stage in STAGES}

# Jobs that run where snakemake runs (a login node) rather than as cluster jobs: light
# ones, and the prompt downloads (compute nodes often have no internet).
localrules:
    prompt_splits,
    eval_prompts,
