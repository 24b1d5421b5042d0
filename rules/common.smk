# What every rule file shares: the validated config, the plans, wildcard patterns, job
# resources and the target lists. Logic lives in linepo/ (linepo.workflow.wiring).
import json
import sys

from linepo.errors import InputError
from linepo.numerics import summary as numerics_summary
from linepo.workflow.cluster import STAGES, stage_resources
from linepo.workflow.config import validate_config
from linepo.workflow.inputs import check_config_files, workflow_config_files
from linepo.workflow.plan import Plan
from linepo.workflow.preflight import check_environment, outputs_to_run, record_outputs, warn_on_config_switch
from linepo.warm.server import start as start_warm_jobs, stop as stop_warm_jobs
from linepo.workflow.evalplan import summary_path
from linepo.workflow.wiring import ID, NAME, Wiring, checked, cli_flags, node_seed

try:
    check_config_files(workflow_config_files(workflow))  # a key given twice: Snakemake's YAML keeps the last
    config = validate_config(config)
    WIRING = Wiring(config)
    if workflow.is_main_process and getattr(workflow, "check_envvars", True):  # not in jobs' own snakemake, nor --lint
        check_environment(config, WIRING.plan)  # offline: hub ids cached; backend vllm: vllm installed
        warn_on_config_switch(WIRING)  # fixed-path outputs of another config (results/.linepo-config.json)
except InputError as err:
    # One clear line and a non-zero exit before any job is planned.
    print(f"linepo: {err}", file=sys.stderr)
    sys.exit(1)


onstart:
    # Jobs are about to run (never in a dry run): record this config as the writer of its fixed-path outputs.
    record_outputs(WIRING, outputs_to_run(workflow.dag))
    # Local jobs' `linepo` commands fork from one process that imported torch once (LINEPO_WARM=0: off);
    # stopped by the Snakefile's onsuccess/onerror.
    start_warm_jobs(workflow.local_exec and workflow.is_main_process)


PLAN = WIRING.plan
EVAL = WIRING.eval
PATHS = Plan.TEMPLATES
POLICY = config["policy"]
REMOTE_CODE = WIRING.remote_code
IMPORT_FLAGS = WIRING.import_flags  # REMOTE_CODE, plus --allow-pickle-weights when the config opts in
RUNTIME = WIRING.runtime

# Node ids are 12 hex digits, names are config keys, replicates numbers (results/runs/<run>/replicate-<r>/);
# a path can then only match its own rule.
wildcard_constraints:
    sft=ID,
    prompts=ID,
    sample=ID,
    prefs=ID,
    scored=ID,
    policy=ID,
    generation=ID,
    batch=ID,
    run=NAME,
    replicate="[0-9]+",
    setting=NAME,
    algorithm=NAME,
    checkpoint="|".join(c.name for c in EVAL.checkpoints) or "sft",

# Per-stage job resources from config["resources"] (gpu, mem_mb, runtime growing with each
# retry, the GPU model for GPU jobs): a rule asks for them with `resources: **RESOURCES["train"]`;
# profiles/slurm adds partition, account and CPUs per GPU.
RESOURCES = {stage: stage_resources(config, stage) for stage in STAGES}
# A model judge needs the judge's GPUs; the synthetic oracle is numpy only.
COMPARE_RESOURCES = RESOURCES["judge"] if EVAL.judge["type"] != "synthetic" else {"mem_mb": 2000, "runtime": 30}

# What the Snakefile's onsuccess says about the pooled tables it prints.
POOLED_NOTE = (f"means over {PLAN.replicate_count} replicates, *_se their standard errors "
               "(results/summary/replicates/: each replicate's)" if PLAN.replicate_count > 1
               else "one replicate (replicates.count: 1), so the *_se columns are nan")
WIN_RATES_NOTE = ("Win rate of row vs column (%; results/summary/win_rates_se.csv has the standard errors):"
                  if PLAN.replicate_count == 1 else f"Win rate of row vs column (%), the mean over {PLAN.replicate_count} "
                  "replicates (results/summary/win_rates_se.csv: standard errors over replicates; "
                  "results/summary/replicates/: each replicate's matrix):")

# `rule all` (Snakefile): every run's schedule and exploitability, and the evaluation.
LLM_TARGETS = WIRING.llm_targets()
EVAL_TARGETS = WIRING.eval_targets()

# Jobs that run where snakemake runs (a login node) rather than as cluster jobs: light
# ones, and the prompt downloads (compute nodes often have no internet).
localrules:
    prompt_splits,
    eval_prompts,
