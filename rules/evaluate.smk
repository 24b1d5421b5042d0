# Evaluation that the default experiment needs at its end: each run's last iterate's
# exploitability under the synthetic oracle (exact from first-token probabilities for the
# embedded policy), collected in one table per replicate (results/summary/replicates/), pooled
# over replicates (mean ± standard error) in results/summary/exploitability.tsv and printed.
#   snakemake results/summary/exploitability.tsv --cores 2

rule exploitability:
    input:
        policy=lambda wc: PLAN.policy_inputs(wc.policy),
        prompts=PLAN.eval_prompts_path(),
    output:
        PATHS["exploitability"],
    params:
        policy=lambda wc: PLAN.policy_dir(wc.policy),
        judge=json.dumps(config["judge"], sort_keys=True),
        runtime=RUNTIME,
    log:
        "logs/eval/exploitability/{policy}.log",
    benchmark:
        "benchmarks/eval/exploitability/{policy}.tsv"
    resources:
        **RESOURCES["evaluate"],
    shell:
        "linepo exploitability --policy {params.policy:q} --prompts {input.prompts} "
        "--judge-config {params.judge:q} {params.runtime} --out {output} > {log} 2>&1"


rule exploitability_table:
    input:
        lambda wc: WIRING.exploitability_reports(wc.replicate),
    output:
        PATHS["exploitability_table"],
    params:
        reports=lambda wc: WIRING.exploitability_table_flags(wc.replicate),
    log:
        "logs/eval/exploitability_table-{replicate}.log",
    localrule: True
    shell:
        "linepo exploitability-table {params.reports} --out {output} > {log} 2>&1"


# Over replicates: per run, the mean and standard error of the per-replicate tables' numbers.
rule exploitability_pooled:
    input:
        WIRING.per_replicate("exploitability_table"),
    output:
        PATHS["exploitability_pooled"],
    params:
        tables=WIRING.pooled_flags("--table", "exploitability_table"),
    log:
        "logs/eval/exploitability_pooled.log",
    localrule: True
    shell:
        "linepo exploitability-pooled {params.tables} --out {output} > {log} 2>&1"


# ---------------------------------------------------------------- Prox fidelity of every step
# Synthetic oracle only (first-word categories): one job per run and replicate reads SFT and every
# step's policy as exact per-prompt category mixes on the eval prompts and writes each step's KL
# and TV to its exact Prox target, beside the exact analogue trajectory
# (linepo.evaluation.prox_fidelity); one local job per replicate collects its runs into a table
# and a per-run summary, and one pools the replicates (mean ± SE) and draws the figure.
#   snakemake results/summary/prox_fidelity.tsv --cores 2

rule prox_fidelity:
    input:
        policies=lambda wc: WIRING.prox_fidelity_iterates(wc.run, wc.replicate),
        prompts=PLAN.eval_prompts_path(),
    output:
        tsv=PATHS["prox_fidelity"],
        probs=PATHS["category_probs"],
    params:
        spec=lambda wc: WIRING.prox_fidelity_spec(wc.run, wc.replicate),
        judge=json.dumps(config["judge"], sort_keys=True),
        runtime=RUNTIME,
    log:
        "logs/runs/{run}/replicate-{replicate}/prox_fidelity.log",
    benchmark:
        "benchmarks/runs/{run}/replicate-{replicate}/prox_fidelity.tsv"
    resources:
        **RESOURCES["evaluate"],
    shell:
        "linepo prox-fidelity --spec {params.spec:q} --prompts {input.prompts} --judge-config {params.judge:q} "
        "{params.runtime} --tsv {output.tsv} --probs {output.probs} > {log} 2>&1"


rule prox_fidelity_table:
    input:
        lambda wc: [PLAN.path("prox_fidelity", run=run, replicate=wc.replicate) for run in WIRING.prox_fidelity_runs],
    output:
        tsv=PATHS["prox_fidelity_table"],
        runs=PATHS["prox_fidelity_runs_table"],
    params:
        runs=lambda wc: WIRING.prox_fidelity_table_flags(wc.replicate),
    log:
        "logs/eval/prox_fidelity_table-{replicate}.log",
    localrule: True
    shell:
        "linepo prox-fidelity-table {params.runs} --tsv {output.tsv} --runs-tsv {output.runs} > {log} 2>&1"


rule prox_fidelity_pooled:
    input:
        steps=WIRING.per_replicate("prox_fidelity_table"),
        runs=WIRING.per_replicate("prox_fidelity_runs_table"),
    output:
        tsv=PATHS["prox_fidelity_pooled"],
        runs=PATHS["prox_fidelity_runs_pooled"],
        figure=report("results/summary/prox_fidelity.png", caption="../report/prox_fidelity.rst", category="Evaluation"),
    params:
        tables=WIRING.pooled_flags("--steps", "prox_fidelity_table") + " "
        + WIRING.pooled_flags("--runs", "prox_fidelity_runs_table"),
    log:
        "logs/eval/prox_fidelity_pooled.log",
    localrule: True
    shell:
        "linepo prox-fidelity-pooled {params.tables} --tsv {output.tsv} --runs-tsv {output.runs} "
        "--figure {output.figure} > {log} 2>&1"


# ---------------------------------------------------------------- win rates (Table 2, Figure 3)
# Each replicate's checkpoints (its SFT, every run's final policy, evaluation.checkpoints) answer
# the eval prompts (AlpacaEval exports: replicate 0's);
# every pair is judged in both orders by the eval judge. Ids from linepo.workflow.evalplan: a
# generation is keyed by policy × eval prompts × decoding (and seeded by its id, so no two
# checkpoints share sampling noise), a comparison by its two generations × eval judge, so a
# new checkpoint adds only its row and column to what is judged and a new eval judge
# re-judges without regenerating. The comparisons are dealt into evaluation.compare_jobs
# batch jobs per replicate (by a hash of their ids; a comparison two replicates share is in the
# first one's batches), each loading the judge once; every pair is cached as
# it is judged (results/eval/comparisons/cache/, not an output: Snakemake would delete it),
# so a batch rerun for a new checkpoint judges only the new pairs. Outputs in
# results/summary/, figures in the report:
#   snakemake --cores 2 && snakemake --report report.html
rule eval_generate:
    input:
        policy=lambda wc: PLAN.policy_inputs(EVAL.generations[wc.generation]),
        prompts=PLAN.eval_prompts_path(),
    output:
        EVAL.generation_path("{generation}"),
    params:
        policy=lambda wc: PLAN.policy_dir(EVAL.generations[wc.generation]),
        decoding=EVAL.decoding,
        seed=lambda wc: EVAL.generation_seed(wc.generation),  # its own: independent of other checkpoints'
        runtime=RUNTIME,
    log:
        "logs/eval/generations/{generation}.log",
    benchmark:
        "benchmarks/eval/generations/{generation}.tsv"
    threads: 1
    resources:
        **RESOURCES["evaluate"],
    shell:
        "linepo sample --policy {params.policy:q} --prompts {input.prompts} --out {output} "
        "--n {params.decoding[n]} --temperature {params.decoding[temperature]} --top-p {params.decoding[top_p]} "
        "--max-new-tokens {params.decoding[max_new_tokens]} --batch-size {params.decoding[batch_size]} "
        "--backend {params.decoding[backend]} --seed {params.seed} --threads {threads} "
        "{params.runtime} > {log} 2>&1"


rule eval_compare_batch:
    input:
        lambda wc: EVAL.batch_generation_paths(wc.batch),
    output:
        EVAL.batch_path("{batch}"),
    params:
        pairs=lambda wc: EVAL.batch_pairs(wc.batch),  # its comparisons: id -> the two generation files
        judge=WIRING.eval_judge_spec(EVAL.judge),
        cache=EVAL.COMPARISON_CACHE,
    log:
        "logs/eval/comparisons/batches/{batch}.log",
    benchmark:
        "benchmarks/eval/comparisons/batches/{batch}.tsv"
    localrule: EVAL.judge["type"] == "synthetic"  # numpy only: not worth a cluster job
    resources:
        **COMPARE_RESOURCES,
    shell:
        "linepo compare-batch --pairs {params.pairs:q} --judge-config {params.judge:q} "
        "--cache-dir {params.cache} --out {output} > {log} 2>&1"


rule alpaca_eval_export:
    input:
        generation=lambda wc: EVAL.generation_path(EVAL.checkpoint(wc.checkpoint).generation),
        prompts=PLAN.eval_prompts_path(),
    output:
        "results/eval/alpaca_eval/{checkpoint}/model_outputs.json",
    params:
        generator=lambda wc: EVAL.checkpoint(wc.checkpoint).label,
    log:
        "logs/eval/alpaca_eval/{checkpoint}.log",
    localrule: True
    shell:
        "linepo alpaca-export --generations {input.generation} --prompts {input.prompts} "
        "--generator {params.generator:q} --out {output} > {log} 2>&1"


# One matrix, curves table and summary table per replicate (results/summary/replicates/,
# comparing the checkpoints within it), pooled cell by cell into results/summary/ (the mean
# over replicates ± its standard error; with one replicate, replicate 0's files as they are).
rule win_rate_matrix:
    input:
        lambda wc: EVAL.batch_paths(EVAL.matrix_comparisons(wc.replicate)),
    output:
        csv=summary_path("win_rates.csv", "{replicate}"),
        se=summary_path("win_rates_se.csv", "{replicate}"),
        hard=summary_path("win_rates_hard.csv", "{replicate}"),
        hard_se=summary_path("win_rates_hard_se.csv", "{replicate}"),
        counts=summary_path("win_rates_counts.csv", "{replicate}"),
        pairs=summary_path("win_rates_pairs.tsv", "{replicate}"),
        figure=summary_path("win_rates.png", "{replicate}"),
    params:
        spec=lambda wc: EVAL.matrix_spec(wc.replicate),
        bootstrap=config["evaluation"]["bootstrap"],
        seed=config["evaluation"]["seed"],
        max_failed=WIRING.eval_failure_limit,
    log:
        "logs/eval/win_rates-{replicate}.log",
    localrule: True
    shell:
        "linepo win-rates --spec {params.spec:q} --bootstrap {params.bootstrap} --seed {params.seed} "
        "--max-failed-fraction {params.max_failed} "
        "--csv {output.csv} --se-csv {output.se} --hard-csv {output.hard} --hard-se-csv {output.hard_se} "
        "--counts-csv {output.counts} --pairs {output.pairs} --figure {output.figure} > {log} 2>&1"


rule win_rates_pooled:
    input:
        EVAL.replicate_files("win_rates"),
    output:
        csv=summary_path("win_rates.csv"),
        se=summary_path("win_rates_se.csv"),
        hard=summary_path("win_rates_hard.csv"),
        hard_se=summary_path("win_rates_hard_se.csv"),
        counts=summary_path("win_rates_counts.csv"),
        pairs=summary_path("win_rates_pairs.tsv"),
        figure=report(summary_path("win_rates.png"), caption="../report/win_rates.rst", category="Evaluation"),
    params:
        spec=EVAL.pooled_spec("win_rates"),
    log:
        "logs/eval/win_rates.log",
    localrule: True
    shell:
        "linepo win-rates-pooled --spec {params.spec:q} --csv {output.csv} --se {output.se} --hard {output.hard} "
        "--hard-se {output.hard_se} --counts {output.counts} --pairs {output.pairs} --figure {output.figure} "
        "> {log} 2>&1"


rule eval_curves:
    input:
        comparisons=lambda wc: EVAL.batch_paths(EVAL.curve_comparisons(wc.replicate)),
        generations=lambda wc: EVAL.curve_generation_paths(wc.replicate),
    output:
        tsv=summary_path("curves.tsv", "{replicate}"),
        figure=summary_path("curves.png", "{replicate}"),
    params:
        spec=lambda wc: EVAL.curves_spec(wc.replicate),
        bootstrap=config["evaluation"]["bootstrap"],
        seed=config["evaluation"]["seed"],
        max_failed=WIRING.eval_failure_limit,
    log:
        "logs/eval/curves-{replicate}.log",
    localrule: True
    shell:
        "linepo eval-curves --spec {params.spec:q} --bootstrap {params.bootstrap} --seed {params.seed} "
        "--max-failed-fraction {params.max_failed} "
        "--tsv {output.tsv} --figure {output.figure} > {log} 2>&1"


rule eval_curves_pooled:
    input:
        EVAL.replicate_files("curves"),
    output:
        tsv=summary_path("curves.tsv"),
        figure=report(summary_path("curves.png"), caption="../report/curves.rst", category="Evaluation"),
    params:
        spec=EVAL.pooled_spec("curves"),
    log:
        "logs/eval/curves.log",
    localrule: True
    shell:
        "linepo eval-curves-pooled --spec {params.spec:q} --tsv {output.tsv} --figure {output.figure} > {log} 2>&1"


rule eval_summary:
    input:
        matrix=summary_path("win_rates.csv", "{replicate}"),
        hard=summary_path("win_rates_hard.csv", "{replicate}"),
        counts=summary_path("win_rates_counts.csv", "{replicate}"),
        generations=lambda wc: EVAL.summary_generation_paths(wc.replicate),
        exploitability=lambda wc: sorted(set(EVAL.exploitability_reports(PLAN, WIRING.synthetic_judge,
                                                                         wc.replicate).values())),
    output:
        summary_path("evaluation.tsv", "{replicate}"),
    params:
        spec=lambda wc: EVAL.summary_spec(PLAN, WIRING.synthetic_judge, wc.replicate),
    log:
        "logs/eval/summary-{replicate}.log",
    localrule: True
    shell:
        "linepo eval-summary --spec {params.spec:q} --matrix {input.matrix} --hard-matrix {input.hard} "
        "--counts {input.counts} --out {output} 2> {log}"


rule eval_summary_pooled:
    input:
        EVAL.replicate_files("summary"),
    output:
        report(summary_path("evaluation.tsv"), caption="../report/summary.rst", category="Evaluation"),
    params:
        spec=EVAL.pooled_spec("summary"),
    log:
        "logs/eval/summary.log",
    localrule: True
    shell:
        "linepo eval-summary-pooled --spec {params.spec:q} --out {output} 2> {log}"
