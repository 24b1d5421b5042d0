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
        judge=json.dumps(config["judge"], sort_keys=True),
        runtime=f"--dtype {POLICY['dtype']} {REMOTE_CODE}",
    log:
        "logs/eval/exploitability/{policy}.log",
    wildcard_constraints:
        policy=ID,
    resources:
        mem_mb=4000,
        runtime=30,
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
