# Evaluation that the default experiment needs at its end: each run's last iterate's
# exploitability under the synthetic oracle (exact from first-token probabilities for the
# embedded policy), collected in one table and printed.
#   snakemake results/summary/exploitability.tsv --cores 2

SYNTHETIC_JUDGE = config["judge"]["type"] == "synthetic"
EVALUATED = {"sft": PLAN.sft, **{run: PLAN.final_policy(run) for run in PLAN.runs}}


rule exploitability:
    input:
        policy=lambda wc: PLAN.policy_inputs(wc.policy),
        prompts=PLAN.eval_prompts_path(),
    output:
        "results/eval/exploitability/{policy}.json",
    params:
        policy=lambda wc: PLAN.policy_dir(wc.policy),
        judge=json.dumps(recipe_view(config["judge"]), sort_keys=True),
        runtime=f"--dtype {POLICY['dtype']} {REMOTE_CODE}",
    log:
        "logs/eval/exploitability/{policy}.log",
    wildcard_constraints:
        policy=ID,
    resources:
        **RESOURCES["evaluate"],
    shell:
        "linepo exploitability --policy {params.policy:q} --prompts {input.prompts} "
        "--judge-config {params.judge:q} {params.runtime} --out {output} > {log} 2>&1"


rule exploitability_table:
    input:
        [f"results/eval/exploitability/{policy}.json" for policy in EVALUATED.values()],
    output:
        "results/summary/exploitability.tsv",
    params:
        reports=" ".join(f"--report {name}=results/eval/exploitability/{policy}.json"
                         for name, policy in EVALUATED.items()),
    localrule: True
    shell:
        "linepo exploitability-table {params.reports} --out {output}"


LLM_TARGETS = [f"results/runs/{run}/steps.tsv" for run in PLAN.runs]
if SYNTHETIC_JUDGE and PLAN.runs:
    LLM_TARGETS.append("results/summary/exploitability.tsv")


# ---------------------------------------------------------------- win rates (Table 2, Figure 3)
# Checkpoints (SFT, every run's final policy, evaluation.checkpoints) answer the eval prompts;
# every pair is judged in both orders by the eval judge. Ids from linepo.workflow.evalplan: a
# generation is keyed by policy × eval prompts × decoding (and seeded by its id, so no two
# checkpoints share sampling noise), a comparison by its two
# generations × eval judge, so a new checkpoint adds its row and column only and a new eval
# judge re-judges without regenerating. Outputs in results/summary/, figures in the report:
#   snakemake --cores 2 && snakemake --report report.html
from linepo.workflow.evalplan import build_eval_plan

EVAL = build_eval_plan(config, PLAN)
EVAL_CFG = config["evaluation"]
EVALUATING = EVAL_CFG["enabled"] and bool(PLAN.runs)
EVAL_CHECKPOINTS = "|".join(c.name for c in EVAL.checkpoints) or "sft"
# A model judge needs the judge's GPUs; the synthetic oracle is numpy only.
COMPARE_RESOURCES = RESOURCES["judge"] if EVAL.judge["type"] != "synthetic" else {"mem_mb": 2000, "runtime": 30}


def eval_spec(**values):
    return json.dumps(values, sort_keys=True)


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
        runtime=f"--dtype {POLICY['dtype']} {REMOTE_CODE}",
    log:
        "logs/eval/generations/{generation}.log",
    wildcard_constraints:
        generation=ID,
    threads: 1
    resources:
        **RESOURCES["evaluate"],
    shell:
        "linepo sample --policy {params.policy:q} --prompts {input.prompts} --out {output} "
        "--n {params.decoding[n]} --temperature {params.decoding[temperature]} --top-p {params.decoding[top_p]} "
        "--max-new-tokens {params.decoding[max_new_tokens]} --batch-size {params.decoding[batch_size]} "
        "--backend {params.decoding[backend]} --seed {params.seed} --threads {threads} "
        "{params.runtime} > {log} 2>&1"


rule eval_compare:
    input:
        a=lambda wc: EVAL.generation_path(EVAL.comparisons[wc.comparison][0]),
        b=lambda wc: EVAL.generation_path(EVAL.comparisons[wc.comparison][1]),
    output:
        EVAL.comparison_path("{comparison}"),
    params:
        judge=json.dumps(EVAL.judge, sort_keys=True),
    log:
        "logs/eval/comparisons/{comparison}.log",
    wildcard_constraints:
        comparison=ID,
    localrule: EVAL.judge["type"] == "synthetic"  # numpy only: not worth a cluster job
    resources:
        **COMPARE_RESOURCES,
    shell:
        "linepo compare --a {input.a} --b {input.b} --judge-config {params.judge:q} --out {output} > {log} 2>&1"


rule alpaca_eval_export:
    input:
        generation=lambda wc: EVAL.generation_path(EVAL.checkpoint(wc.checkpoint).generation),
        prompts=PLAN.eval_prompts_path(),
    output:
        "results/eval/alpaca_eval/{checkpoint}/model_outputs.json",
    params:
        generator=lambda wc: EVAL.checkpoint(wc.checkpoint).label,
    wildcard_constraints:
        checkpoint=EVAL_CHECKPOINTS,
    localrule: True
    shell:
        "linepo alpaca-export --generations {input.generation} --prompts {input.prompts} "
        "--generator {params.generator:q} --out {output}"


rule win_rate_matrix:
    input:
        [EVAL.comparison_path(c) for c in EVAL.matrix_comparisons()],
    output:
        csv="results/summary/win_rates.csv",
        se="results/summary/win_rates_se.csv",
        hard="results/summary/win_rates_hard.csv",
        hard_se="results/summary/win_rates_hard_se.csv",
        pairs="results/summary/win_rates_pairs.tsv",
        figure=report("results/summary/win_rates.png", caption="../report/win_rates.rst", category="Evaluation"),
    params:
        spec=eval_spec(
            checkpoints=[{"name": c.name, "label": c.label, "generation": c.generation} for c in EVAL.checkpoints],
            comparisons={c: {"a": EVAL.comparisons[c][0], "b": EVAL.comparisons[c][1], "path": EVAL.comparison_path(c)}
                         for c in EVAL.matrix_comparisons()},
        ),
        bootstrap=EVAL_CFG["bootstrap"],
        seed=EVAL_CFG["seed"],
    log:
        "logs/eval/win_rates.log",
    localrule: True
    shell:
        "linepo win-rates --spec {params.spec:q} --bootstrap {params.bootstrap} --seed {params.seed} "
        "--csv {output.csv} --se-csv {output.se} --hard-csv {output.hard} --hard-se-csv {output.hard_se} "
        "--pairs {output.pairs} --figure {output.figure} > {log} 2>&1"


CURVE_POINTS = [p for points in EVAL.curves.values() for p in points]


rule eval_curves:
    input:
        comparisons=[EVAL.comparison_path(c) for c in EVAL.curve_comparisons()],
        generations=sorted({EVAL.generation_path(p.generation) for p in CURVE_POINTS}),
    output:
        tsv="results/summary/curves.tsv",
        figure=report("results/summary/curves.png", caption="../report/curves.rst", category="Evaluation"),
    params:
        spec=eval_spec(
            runs={run: {"label": EVAL.run_labels[run],
                        "round_length": EVAL.round_length[run],
                        "points": [{"iteration": p.iteration, "round": p.round, "split": p.split,
                                    "generation": p.generation, "comparison": p.comparison,
                                    "sft_generation": EVAL.sft_generation} for p in points]}
                  for run, points in EVAL.curves.items()},
            generations={p.generation: EVAL.generation_path(p.generation) for p in CURVE_POINTS},
            comparisons={c: EVAL.comparison_path(c) for c in EVAL.curve_comparisons()},
        ),
        bootstrap=EVAL_CFG["bootstrap"],
        seed=EVAL_CFG["seed"],
    log:
        "logs/eval/curves.log",
    localrule: True
    shell:
        "linepo eval-curves --spec {params.spec:q} --bootstrap {params.bootstrap} --seed {params.seed} "
        "--tsv {output.tsv} --figure {output.figure} > {log} 2>&1"


EXPLOITABILITY_OF = ({c.name: f"results/eval/exploitability/{c.policy}.json" for c in EVAL.checkpoints}
                     if SYNTHETIC_JUDGE else {})


rule eval_summary:
    input:
        matrix="results/summary/win_rates.csv",
        hard="results/summary/win_rates_hard.csv",
        generations=sorted({EVAL.generation_path(c.generation) for c in EVAL.checkpoints}),
        exploitability=sorted(set(EXPLOITABILITY_OF.values())),
    output:
        report("results/summary/evaluation.tsv", caption="../report/summary.rst", category="Evaluation"),
    params:
        spec=eval_spec(
            checkpoints=[{"name": c.name, "label": c.label, "generation": c.generation,
                          "policy": PLAN.policy_dir(c.policy)} for c in EVAL.checkpoints],
            generations={c.generation: EVAL.generation_path(c.generation) for c in EVAL.checkpoints},
            exploitability=EXPLOITABILITY_OF,
        ),
    log:
        "logs/eval/summary.log",
    localrule: True
    shell:
        "linepo eval-summary --spec {params.spec:q} --matrix {input.matrix} --hard-matrix {input.hard} "
        "--out {output} 2> {log}"


EVAL_TARGETS = []
if EVALUATING:
    EVAL_TARGETS = ["results/summary/win_rates.csv", "results/summary/evaluation.tsv"]
    EVAL_TARGETS += [f"results/eval/alpaca_eval/{c.name}/model_outputs.json" for c in EVAL.checkpoints]
    if EVAL.curves:
        EVAL_TARGETS.append("results/summary/curves.tsv")
