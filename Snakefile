# linepo workflow: wiring only. Logic lives in the `linepo` package; rules call its CLI.
#   snakemake --cores 2                # the embedded default experiment (config.yaml)
#   snakemake synthetic --cores 2      # the paper's tabular games (Figures 1–2) only
#   snakemake -n --configfile configs/paper.yaml --replace-workflow-config   # the paper's LLM setting
from pathlib import Path

from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


# `snakemake --report report.html`: the evaluation figures and tables, with captions in report/.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/synthetic.smk"
include: "rules/llm.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.synthetic.input,
        LLM_TARGETS,
        EVAL_TARGETS,


onerror:
    stop_warm_jobs()


onsuccess:
    stop_warm_jobs()
    # The default experiment's headline: each run's last-iterate exploitability, pooled over replicates.
    table = Path(PATHS["exploitability_pooled"])
    if table.exists():
        print("\nLast-iterate exploitability (max_j P(y_j ≻ π) − ½; 0 at the Nash policy):", POOLED_NOTE)
        print(table.read_text())
        # the checkpoints' whole histories: one numerics environment, or a warning naming each
        print(numerics_summary(p for r in WIRING.replicates for p in WIRING.exploitability_reports(r)) + "\n")
    fidelity = Path(PATHS["prox_fidelity_runs_pooled"])
    if fidelity.exists():
        print("Prox fidelity: per run, median KL(trained ‖ exact Prox target) over its steps, and its final "
              "exploitability measured vs the exact analogue (results/summary/prox_fidelity.tsv):", POOLED_NOTE)
        print(fidelity.read_text())
    matrix = Path("results/summary/win_rates.csv")
    if matrix.exists():
        print(WIN_RATES_NOTE)
        print(matrix.read_text())
