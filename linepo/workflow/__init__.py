"""Planning the Snakemake DAG: config validation, the algorithm registry, content-addressed plans, cluster resources."""
