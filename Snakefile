# linepo workflow: wiring only. Logic lives in the `linepo` package; rules call its CLI.
#   snakemake --cores 2                # the embedded default experiment
#   snakemake synthetic --cores 2      # the paper's tabular games (Figures 1–2)
from snakemake.utils import min_version

min_version("8.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/synthetic.smk"


rule all:
    default_target: True
    input:
        rules.synthetic.input,
