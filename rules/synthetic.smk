# Tabular preference games (paper §4, Figures 1–2): one trajectory per setting × algorithm,
# one figure and one summary table per setting.
#   snakemake synthetic --cores 2
import json

from linepo.games.runs import relevant_settings

SYNTHETIC = config["synthetic"]["settings"]
_GAME_FLAGS = {"eta": "--eta", "tau": "--tau", "iterations": "--iterations",
               "inner_steps": "--inner-steps", "samples": "--samples", "seed": "--seed"}


def synthetic_flags(wildcards):
    """Only the settings this algorithm uses, so an unrelated edit reruns nothing."""
    setting = SYNTHETIC[wildcards.setting]
    keys = relevant_settings(wildcards.algorithm)
    return " ".join(f"{_GAME_FLAGS[key]} {setting[key]}" for key in keys)


rule synthetic_trajectory:
    output:
        "results/synthetic/{setting}/{algorithm}.parquet",
    params:
        matrix=lambda wc: json.dumps(SYNTHETIC[wc.setting]["matrix"]),
        init=lambda wc: json.dumps(SYNTHETIC[wc.setting]["init"]),
        flags=synthetic_flags,
    log:
        "logs/synthetic/{setting}/{algorithm}.log",
    wildcard_constraints:
        setting=WILDCARD_NAME,
        algorithm=WILDCARD_NAME,
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "linepo game --algorithm {wildcards.algorithm} --matrix '{params.matrix}' "
        "--init '{params.init}' {params.flags} --json --out {output} > {log} 2>&1"


rule synthetic_figure:
    input:
        lambda wc: expand(
            "results/synthetic/{setting}/{algorithm}.parquet",
            setting=wc.setting,
            algorithm=SYNTHETIC[wc.setting]["algorithms"],
        ),
    output:
        figure="results/synthetic/{setting}/figure.png",
        table="results/synthetic/{setting}/summary.tsv",
    log:
        "logs/synthetic/{setting}/figure.log",
    wildcard_constraints:
        setting=WILDCARD_NAME,
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "linepo game-figure {input} --out {output.figure} --table {output.table} "
        "--title {wildcards.setting} > {log} 2>&1 && cat {output.table}"


rule synthetic:
    input:
        expand("results/synthetic/{setting}/figure.png", setting=list(SYNTHETIC)),
