# Tabular preference games (paper §4, Figures 1–2): one trajectory per setting × algorithm,
# one figure and one summary table per setting.
#   snakemake synthetic --cores 2
SYNTHETIC = config["synthetic"]["settings"]


rule synthetic_trajectory:
    output:
        "results/synthetic/{setting}/{algorithm}.parquet",
    params:
        matrix=lambda wc: json.dumps(SYNTHETIC[wc.setting]["matrix"]),
        init=lambda wc: json.dumps(SYNTHETIC[wc.setting]["init"]),
        flags=WIRING.synthetic_flags,
    log:
        "logs/synthetic/{setting}/{algorithm}.log",
    benchmark:
        "benchmarks/synthetic/{setting}/{algorithm}.tsv"
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
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "linepo game-figure {input} --out {output.figure} --table {output.table} "
        "--title {wildcards.setting} > {log} 2>&1 && cat {output.table}"


rule synthetic:
    input:
        expand("results/synthetic/{setting}/figure.png", setting=list(SYNTHETIC)),
