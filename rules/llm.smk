# The LLM workflow (paper Algorithms 3–4): per run, round r and split s,
#   sample → judge → pairs → score → train,
# with content-addressed node ids from linepo.workflow.plan: shared steps run once, a changed
# parameter makes new ids from that step on, and changing it back finds the old files.
#   snakemake --cores 2                 # everything in config.yaml
#   snakemake results/runs/linepo/steps.tsv --cores 2   # one run, up to its final policy
import json

from linepo.stages.parallel import recipe_view, shard_count
from linepo.workflow.plan import build_plan

PLAN = build_plan(config)
ID = "[0-9a-f]{12}"
POLICY = config["policy"]
REMOTE_CODE = "--trust-remote-code" if POLICY["trust_remote_code"] else ""


def node_seed(node_id):
    """A per-node RNG seed derived from its id: reproducible, different for every node."""
    return int(node_id[:8], 16)


def flags(values, names):
    """`--a-b value` for each of ``names`` present (not None) in ``values``."""
    parts = []
    for name in names:
        value = values.get(name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return " ".join(parts)


# How many processes run a step comes from the GPUs its job gets (resources.<stage>.gpu, or a
# profile's override) unless the config says: params that are callables of `resources` are
# not tracked by Snakemake, so a new GPU count reruns nothing (sharded == unsharded output).
SAMPLING = recipe_view(config["sampling"])
ACCELERATE_CONFIG = config["training"].get("accelerate_config")


def sample_shards(wildcards, resources):
    per_shard = SAMPLING["tensor_parallel_size"] if SAMPLING["backend"] == "vllm" else 1
    return shard_count(config["sampling"], resources.gpu, per_shard)


def judge_shards(wildcards, resources):
    return shard_count(config["judge"], resources.gpu)


def train_launch(wildcards, resources):
    """``--num-processes N`` (one per GPU of the job) and the accelerate config, for linepo train."""
    launch = f"--num-processes {shard_count({}, resources.gpu)}"
    return launch + (f" --accelerate-config {ACCELERATE_CONFIG}" if ACCELERATE_CONFIG else "")


def checked(table, node_id, wildcards):
    """The plan's node for an id, after checking the path's round/split agree with it."""
    node = table[node_id]
    if str(node.round) != wildcards.round or node.split != wildcards.split:
        raise ValueError(f"node {node_id} belongs to r{node.round}/s{node.split}, not r{wildcards.round}/s{wildcards.split}")
    return node


# ---------------------------------------------------------------- SFT policy and prompts

if POLICY["sft"] == "embedded":

    rule sft_embedded:
        output:
            directory("results/sft/{sft}/model"),
        params:
            embedded=POLICY["embedded"],
            style_mix=" ".join(str(x) for x in POLICY["embedded"]["style_mix"]),
        log:
            "logs/sft/{sft}.log",
        wildcard_constraints:
            sft=ID,
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        shell:
            "linepo embedded build --out {output} --steps {params.embedded[steps]} "
            "--seed {params.embedded[seed]} --style-mix {params.style_mix} "
            "--continuations {params.embedded[continuations]} > {log} 2>&1"

elif POLICY["sft"] == "build":

    # Supervised fine-tuning of policy.build.base on chats (assistant turns only; linepo/stages/sft.py),
    # resumable from its side folder like the train rule.
    rule sft_build:
        output:
            directory("results/sft/{sft}/model"),
        params:
            build=POLICY["build"],
            settings=json.dumps({k: v for k, v in POLICY["build"].items()
                                 if k not in ("base", "data", "split", "messages_column")}, sort_keys=True),
            split=f"--split {POLICY['build']['split']}" if POLICY["build"]["split"] else "",
            tokenizer=f"--tokenizer {POLICY['tokenizer']}" if POLICY.get("tokenizer") else "",
        log:
            "logs/sft/{sft}.log",
        wildcard_constraints:
            sft=ID,
        threads: 1
        resources:
            **RESOURCES["train"],
        shell:
            "linepo sft --base {params.build[base]:q} {params.tokenizer} --data {params.build[data]:q} {params.split} "
            "--messages-column {params.build[messages_column]} --config-json {params.settings:q} {REMOTE_CODE} "
            "--out {output} --resume-dir {output}.partial > {log} 2>&1"

else:

    # A configured SFT policy (a folder or a hub id, with an optional separate tokenizer) is
    # imported once into results/sft/: every later job reads one local safetensors folder
    # with its tokenizer and chat template. Where snakemake runs, like the prompt downloads.
    rule sft_import:
        output:
            directory("results/sft/{sft}/model"),
        params:
            source=POLICY["sft"],
            tokenizer=f"--tokenizer {POLICY['tokenizer']}" if POLICY.get("tokenizer") else "",
        log:
            "logs/sft/{sft}.log",
        wildcard_constraints:
            sft=ID,
        localrule: True
        shell:
            "linepo import-policy --source {params.source:q} {params.tokenizer} --dtype {POLICY[dtype]} "
            "{REMOTE_CODE} --out {output} > {log} 2>&1"


rule prompt_splits:
    output:
        expand("results/prompts/{{prompts}}/shard-{split}.parquet", split=range(PLAN.num_splits)),
    params:
        prompts=config["prompts"],
        flags=flags(config["prompts"], ["split", "prompt_column", "max_prompts"]),
    log:
        "logs/prompts/{prompts}.log",
    wildcard_constraints:
        prompts=ID,
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "linepo prompts --source {params.prompts[source]:q} {params.flags} --shards {params.prompts[num_splits]} "
        "--seed {params.prompts[seed]} --out-dir results/prompts/{wildcards.prompts} > {log} 2>&1"


rule eval_prompts:
    output:
        "results/prompts/eval-{prompts}.parquet",
    params:
        prompts=config["eval_prompts"],
        flags=flags(
            {**config["eval_prompts"], "split": config["eval_prompts"]["split"] or
             ("eval" if config["eval_prompts"]["source"] == "embedded" else None)},
            ["split", "prompt_column", "max_prompts", "name"],
        ),
    log:
        "logs/prompts/eval-{prompts}.log",
    wildcard_constraints:
        prompts=ID,
    shell:
        "linepo prompts --source {params.prompts[source]:q} {params.flags} --out {output} > {log} 2>&1"


rule validation_prompts:
    output:
        "results/prompts/val-{prompts}.parquet",
    params:
        prompts=config["validation"]["prompts"],
        flags=flags(config["validation"]["prompts"], ["split", "prompt_column", "max_prompts", "name"]),
    log:
        "logs/prompts/val-{prompts}.log",
    wildcard_constraints:
        prompts=ID,
    localrule: True
    shell:
        "linepo prompts --source {params.prompts[source]:q} {params.flags} --out {output} > {log} 2>&1"


# ---------------------------------------------------------------- one step's data


rule sample:
    input:
        policy=lambda wc: PLAN.policy_inputs(checked(PLAN.samples, wc.sample, wc).policy),
        prompts=lambda wc: PLAN.prompts_path(checked(PLAN.samples, wc.sample, wc).split),
    output:
        "results/samples/r{round}/s{split}/{sample}.parquet",
    params:
        policy=lambda wc: PLAN.policy_dir(PLAN.samples[wc.sample].policy),
        sampling=SAMPLING,
        seed=lambda wc: node_seed(wc.sample),
        shards=sample_shards,
    log:
        "logs/samples/r{round}/s{split}/{sample}.log",
    wildcard_constraints:
        sample=ID,
    threads: 1
    resources:
        **RESOURCES["sample"],
    shell:
        "linepo sample --policy {params.policy:q} --prompts {input.prompts} --out {output} "
        "--n {params.sampling[n]} --temperature {params.sampling[temperature]} --top-p {params.sampling[top_p]} "
        "--max-new-tokens {params.sampling[max_new_tokens]} --batch-size {params.sampling[batch_size]} "
        "--backend {params.sampling[backend]} --tensor-parallel-size {params.sampling[tensor_parallel_size]} "
        "--dtype {POLICY[dtype]} {REMOTE_CODE} --seed {params.seed} --data-parallel {params.shards} > {log} 2>&1"


rule judge:
    input:
        samples=lambda wc: PLAN.samples_path(checked(PLAN.prefs, wc.prefs, wc).sample),
    output:
        "results/prefs/r{round}/s{split}/{prefs}/judgments.parquet",
    params:
        judge=json.dumps(recipe_view(config["judge"]), sort_keys=True),
        seed=lambda wc: node_seed(wc.prefs),
        shards=judge_shards,
    log:
        "logs/prefs/r{round}/s{split}/{prefs}/judge.log",
    wildcard_constraints:
        prefs=ID,
    resources:
        **RESOURCES["judge"],
    shell:
        "linepo judge --samples {input.samples} --judge-config {params.judge:q} --seed {params.seed} "
        "--out {output} --no-progress --data-parallel {params.shards} > {log} 2>&1"


rule pairs:
    input:
        samples=lambda wc: PLAN.samples_path(checked(PLAN.prefs, wc.prefs, wc).sample),
        judgments="results/prefs/r{round}/s{split}/{prefs}/judgments.parquet",
    output:
        "results/prefs/r{round}/s{split}/{prefs}/prefs.parquet",
    params:
        selection=config["preferences"]["selection"],
        outcomes="--use-outcomes" if config["preferences"]["use_outcomes"] else "",
    log:
        "logs/prefs/r{round}/s{split}/{prefs}/pairs.log",
    wildcard_constraints:
        prefs=ID,
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "linepo pairs --samples {input.samples} --judgments {input.judgments} --selection {params.selection} "
        "{params.outcomes} --out {output} > {log} 2>&1"


# ---------------------------------------------------------------- scoring and training


rule score:
    input:
        prefs=lambda wc: [PLAN.prefs_path(p) for p in checked(PLAN.scored, wc.scored, wc).prefs],
        reference=lambda wc: PLAN.policy_inputs(PLAN.scored[wc.scored].reference),
        anchor=lambda wc: PLAN.policy_inputs(PLAN.scored[wc.scored].anchor),
    output:
        "results/scored/r{round}/s{split}/{scored}.parquet",
    params:
        reference=lambda wc: PLAN.policy_dir(PLAN.scored[wc.scored].reference),
        anchor=lambda wc: PLAN.policy_dir(PLAN.scored[wc.scored].anchor),
        scoring=config["scoring"],
        runtime=f"--dtype {POLICY['dtype']} {REMOTE_CODE}",
    log:
        "logs/scored/r{round}/s{split}/{scored}.log",
    wildcard_constraints:
        scored=ID,
    threads: 1
    resources:
        **RESOURCES["score"],
    shell:
        "linepo score --preferences {input.prefs} --reference {params.reference:q} --anchor {params.anchor:q} "
        "--batch-size {params.scoring[batch_size]} --max-length {params.scoring[max_length]} {params.runtime} "
        "--out {output} > {log} 2>&1"


rule train:
    input:
        parent=lambda wc: PLAN.policy_inputs(checked(PLAN.policies, wc.policy, wc).parent),
        scored=lambda wc: [PLAN.scored_path(s) for s in PLAN.policies[wc.policy].scored],
        validation=lambda wc: [PLAN.scored_path(s) for s in PLAN.policies[wc.policy].validation],
    output:
        directory("results/policies/r{round}/s{split}/{policy}/model"),
    params:
        parent=lambda wc: PLAN.policy_dir(PLAN.policies[wc.policy].parent),
        settings=lambda wc: json.dumps(PLAN.train_settings(wc.policy), sort_keys=True),
        validation=lambda wc: " ".join(["--validation"] + [PLAN.scored_path(s) for s in PLAN.policies[wc.policy].validation])
        if PLAN.policies[wc.policy].validation else "",
        launch=train_launch,
    log:
        "logs/policies/r{round}/s{split}/{policy}.log",
    wildcard_constraints:
        policy=ID,
    threads: 1
    resources:
        **RESOURCES["train"],
    shell:
        # Mid-step Trainer checkpoints live beside the declared output (Snakemake deletes
        # outputs before a job starts), so a rerun after a kill resumes from them. With more
        # than one GPU, linepo train checks its inputs and re-runs itself under accelerate launch.
        "linepo train --policy {params.parent:q} --scored {input.scored} {params.validation} "
        "--config-json {params.settings:q} {REMOTE_CODE} --out {output} --resume-dir {output}.partial "
        "{params.launch} > {log} 2>&1"


# ---------------------------------------------------------------- per-run targets


rule run_steps:
    input:
        lambda wc: [PLAN.policy_dir(step.policy) for step in PLAN.runs[wc.run]],
    output:
        "results/runs/{run}/steps.tsv",
    params:
        steps=lambda wc: json.dumps([
            {"round": s.round, "split": s.split, "policy": PLAN.policy_dir(s.policy),
             "reference": PLAN.policy_dir(s.reference), "reference_moved": s.reference_moved}
            for s in PLAN.runs[wc.run]
        ]),
    wildcard_constraints:
        run="[A-Za-z0-9_]+",
    localrule: True
    shell:
        "linepo run-steps --steps {params.steps:q} --out {output}"
