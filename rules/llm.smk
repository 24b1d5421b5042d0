# The LLM workflow (paper Algorithms 3–4): per run, round r and split s,
#   sample → judge → pairs → score → train,
# with content-addressed node ids from linepo.workflow.plan: shared steps run once, a changed
# parameter makes new ids from that step on, and changing it back finds the old files.
#   snakemake --cores 2                 # everything in config.yaml
#   snakemake results/runs/linepo/replicate-0/steps.tsv --cores 2   # one run, up to its final policy
# Rules only wire files to `linepo` commands; helpers, plans and patterns: rules/common.smk.


# ---------------------------------------------------------------- SFT policy and prompts

if POLICY["sft"] == "embedded":

    rule sft_embedded:
        output:
            directory(PATHS["sft"]),
        params:
            embedded=lambda wc: WIRING.sft_embedded(wc.sft),  # replicate r ≥ 1 of a varied SFT: its own seed
            style_mix=" ".join(str(x) for x in POLICY["embedded"]["style_mix"]),
        log:
            "logs/sft/{sft}.log",
        benchmark:
            "benchmarks/sft/{sft}.tsv"
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
            directory(PATHS["sft"]),
        params:
            build=POLICY["build"],
            settings=lambda wc: WIRING.sft_build_settings(wc.sft),  # replicate r ≥ 1 of a varied SFT: its own seed
            split=f"--split {POLICY['build']['split']}" if POLICY["build"]["split"] else "",
            tokenizer=f"--tokenizer {POLICY['tokenizer']}" if POLICY.get("tokenizer") else "",
            remote_code=IMPORT_FLAGS,
        log:
            "logs/sft/{sft}.log",
        benchmark:
            "benchmarks/sft/{sft}.tsv"
        threads: 1
        resources:
            **RESOURCES["train"],
        shell:
            "linepo sft --base {params.build[base]:q} {params.tokenizer} --data {params.build[data]:q} {params.split} "
            "--messages-column {params.build[messages_column]} --config-json {params.settings:q} {params.remote_code} "
            "--out {output} --resume-dir {output}.partial > {log} 2>&1"

else:

    # A configured SFT policy (a folder or a hub id, with an optional separate tokenizer) is
    # imported once into results/sft/: every later job reads one local safetensors folder
    # with its tokenizer and chat template. Where snakemake runs, like the prompt downloads.
    rule sft_import:
        output:
            directory(PATHS["sft"]),
        params:
            source=POLICY["sft"],
            tokenizer=f"--tokenizer {POLICY['tokenizer']}" if POLICY.get("tokenizer") else "",
            dtype=POLICY["dtype"],
            remote_code=IMPORT_FLAGS,
        log:
            "logs/sft/{sft}.log",
        benchmark:
            "benchmarks/sft/{sft}.tsv"
        localrule: True
        shell:
            "linepo import-policy --source {params.source:q} {params.tokenizer} --dtype {params.dtype} "
            "{params.remote_code} --out {output} > {log} 2>&1"


rule prompt_splits:
    output:
        expand(PATHS["prompt_split"].replace("{prompts}", "{{prompts}}"), split=range(PLAN.num_splits)),
    params:
        prompts=config["prompts"],
        flags=cli_flags(config["prompts"], ["split", "prompt_column", "max_prompts", "max_prompt_chars"]),
    log:
        "logs/prompts/{prompts}.log",
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "linepo prompts --source {params.prompts[source]:q} {params.flags} --shards {params.prompts[num_splits]} "
        "--seed {params.prompts[seed]} --out-dir results/prompts/{wildcards.prompts} > {log} 2>&1"


rule eval_prompts:
    output:
        PATHS["eval_prompts"],
    params:
        prompts=config["eval_prompts"],
        flags=WIRING.eval_prompt_flags(),
    log:
        "logs/prompts/eval-{prompts}.log",
    shell:
        "linepo prompts --source {params.prompts[source]:q} {params.flags} --out {output} > {log} 2>&1"


rule validation_prompts:
    output:
        PATHS["validation_prompts"],
    params:
        prompts=config["validation"]["prompts"],
        flags=cli_flags(config["validation"]["prompts"], ["split", "prompt_column", "max_prompts", "max_prompt_chars",
                                                          "name"]),
    log:
        "logs/prompts/val-{prompts}.log",
    localrule: True
    shell:
        "linepo prompts --source {params.prompts[source]:q} {params.flags} --out {output} > {log} 2>&1"


# ---------------------------------------------------------------- one step's data


rule sample:
    input:
        policy=lambda wc: PLAN.policy_inputs(checked(PLAN.samples, wc.sample, wc).policy),
        prompts=lambda wc: PLAN.prompts_path(checked(PLAN.samples, wc.sample, wc).split),
    output:
        PATHS["samples"],
    params:
        policy=lambda wc: PLAN.policy_dir(PLAN.samples[wc.sample].policy),
        sampling=config["sampling"],
        seed=lambda wc: node_seed(wc.sample),
        shards=WIRING.sample_shards,
        dtype=POLICY["dtype"],
        remote_code=REMOTE_CODE,
    log:
        "logs/samples/r{round}/s{split}/{sample}.log",
    benchmark:
        "benchmarks/samples/r{round}/s{split}/{sample}.tsv"
    threads: 1
    resources:
        **RESOURCES["sample"],
    shell:
        "linepo sample --policy {params.policy:q} --prompts {input.prompts} --out {output} "
        "--n {params.sampling[n]} --temperature {params.sampling[temperature]} --top-p {params.sampling[top_p]} "
        "--max-new-tokens {params.sampling[max_new_tokens]} --batch-size {params.sampling[batch_size]} "
        "--backend {params.sampling[backend]} --tensor-parallel-size {params.sampling[tensor_parallel_size]} "
        "--dtype {params.dtype} {params.remote_code} --seed {params.seed} --data-parallel {params.shards} > {log} 2>&1"


rule judge:
    input:
        samples=lambda wc: PLAN.samples_path(checked(PLAN.prefs, wc.prefs, wc).sample),
    output:
        PATHS["judgments"],
    params:
        judge=WIRING.judge_spec,
        seed=lambda wc: node_seed(wc.prefs),
        shards=WIRING.judge_shards,
        max_failed=WIRING.judge_failure_limit,
    log:
        "logs/prefs/r{round}/s{split}/{prefs}/judge.log",
    benchmark:
        "benchmarks/prefs/r{round}/s{split}/{prefs}/judge.tsv"
    resources:
        **RESOURCES["judge"],
    shell:
        "linepo judge --samples {input.samples} --judge-config {params.judge:q} --seed {params.seed} "
        "--out {output} --no-progress --data-parallel {params.shards} --max-failed-fraction {params.max_failed} "
        "> {log} 2>&1"


rule pairs:
    input:
        samples=lambda wc: PLAN.samples_path(checked(PLAN.prefs, wc.prefs, wc).sample),
        judgments=PATHS["judgments"],
    output:
        PATHS["prefs"],
    params:
        selection=config["preferences"]["selection"],
        outcomes="--use-outcomes" if config["preferences"]["use_outcomes"] else "",
    log:
        "logs/prefs/r{round}/s{split}/{prefs}/pairs.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "linepo pairs --samples {input.samples} --judgments {input.judgments} --selection {params.selection} "
        "{params.outcomes} --out {output} > {log} 2>&1"


# ---------------------------------------------------------------- scoring and training


SCORE_RUNTIME = RUNTIME + (" --deduplicate" if config["scoring"].get("deduplicate") else "")


rule score:
    input:
        prefs=lambda wc: [PLAN.prefs_path(p) for p in checked(PLAN.scored, wc.scored, wc).prefs],
        reference=lambda wc: PLAN.policy_inputs(PLAN.scored[wc.scored].reference),
        anchor=lambda wc: PLAN.policy_inputs(PLAN.scored[wc.scored].anchor),
    output:
        PATHS["scored"],
    params:
        reference=lambda wc: PLAN.policy_dir(PLAN.scored[wc.scored].reference),
        anchor=lambda wc: PLAN.policy_dir(PLAN.scored[wc.scored].anchor),
        # scoring.deduplicate rides on runtime, and scoring leaves it out, so that with it unset
        # the params and the shell command are what they were before the key existed (no rerun).
        scoring={key: value for key, value in config["scoring"].items() if key != "deduplicate"},
        runtime=SCORE_RUNTIME,
    log:
        "logs/scored/r{round}/s{split}/{scored}.log",
    benchmark:
        "benchmarks/scored/r{round}/s{split}/{scored}.tsv"
    threads: 1
    resources:
        **RESOURCES["score"],
    shell:
        "linepo score --preferences {input.prefs} --reference {params.reference:q} --anchor {params.anchor:q} "
        "--batch-size {params.scoring[batch_size]} --max-length {params.scoring[max_length]} {params.runtime} "
        "--out {output} > {log} 2>&1"


# MNPO's scored nodes (linepo.workflow.schedules, "mixture"): the anchor is a weighted sum of
# past iterates' log-probs; a rule of its own, so rule score's jobs and params are unchanged.
rule score_mixture:
    input:
        prefs=lambda wc: [PLAN.prefs_path(p) for p in checked(PLAN.scored, wc.scored, wc).prefs],
        reference=lambda wc: PLAN.policy_inputs(PLAN.scored[wc.scored].reference),
        anchors=lambda wc: [f for p, _ in PLAN.scored[wc.scored].mixture for f in PLAN.policy_inputs(p)],
    output:
        PATHS["scored_mixture"],
    params:
        reference=lambda wc: PLAN.policy_dir(PLAN.scored[wc.scored].reference),
        anchor=lambda wc: PLAN.policy_dir(PLAN.scored[wc.scored].anchor),
        mixture=lambda wc: PLAN.mixture_flags(wc.scored),
        scoring=config["scoring"],
        runtime=SCORE_RUNTIME,
    log:
        "logs/scored/r{round}/s{split}/{scored}-mixture.log",
    benchmark:
        "benchmarks/scored/r{round}/s{split}/{scored}-mixture.tsv"
    threads: 1
    resources:
        **RESOURCES["score"],
    shell:
        "linepo score --preferences {input.prefs} --reference {params.reference:q} --anchor {params.anchor:q} "
        "{params.mixture} --batch-size {params.scoring[batch_size]} --max-length {params.scoring[max_length]} "
        "{params.runtime} --out {output} > {log} 2>&1"


rule train:
    input:
        parent=lambda wc: PLAN.policy_inputs(checked(PLAN.policies, wc.policy, wc).parent),
        scored=lambda wc: [PLAN.scored_path(s) for s in PLAN.policies[wc.policy].scored],
        validation=lambda wc: [PLAN.scored_path(s) for s in PLAN.policies[wc.policy].validation],
    output:
        directory(PATHS["policy"]),
    params:
        parent=lambda wc: PLAN.policy_dir(PLAN.policies[wc.policy].parent),
        settings=lambda wc: json.dumps(PLAN.train_settings(wc.policy), sort_keys=True),
        validation=lambda wc: " ".join(["--validation"] + [PLAN.scored_path(s) for s in PLAN.policies[wc.policy].validation])
        if PLAN.policies[wc.policy].validation else "",
        launch=WIRING.train_launch,
        remote_code=REMOTE_CODE,
    log:
        "logs/policies/r{round}/s{split}/{policy}.log",
    benchmark:
        "benchmarks/policies/r{round}/s{split}/{policy}.tsv"
    threads: 1
    resources:
        **RESOURCES["train"],
    shell:
        # Mid-step Trainer checkpoints live beside the declared output (Snakemake deletes
        # outputs before a job starts), so a rerun after a kill resumes from them. With more
        # than one GPU, linepo train checks its inputs and re-runs itself under accelerate launch.
        "linepo train --policy {params.parent:q} --scored {input.scored} {params.validation} "
        "--config-json {params.settings:q} {params.remote_code} --out {output} --resume-dir {output}.partial "
        "{params.launch} > {log} 2>&1"


# ---------------------------------------------------------------- per-run targets, one per replicate


rule run_steps:
    input:
        lambda wc: [PLAN.policy_dir(step.policy) for step in PLAN.training_steps(wc.run, int(wc.replicate))],
    output:
        PATHS["steps"],
    params:
        steps=lambda wc: WIRING.steps_json(wc.run, wc.replicate),
    log:
        "logs/runs/{run}/replicate-{replicate}/steps.log",
    localrule: True
    shell:
        "linepo run-steps --steps {params.steps:q} --out {output} > {log} 2>&1"
