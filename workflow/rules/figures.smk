from kdpipe.plots import figure_stems

FIGURES = expand(f"{R}/figures/{{stem}}.{{ext}}",
                 stem=figure_stems(SETUPS, config["temperatures"]), ext=config["plots"]["formats"])


rule figures:
    input:
        expand(f"{R}/tables/{{name}}.parquet", name=TABLE_NAMES),
    output:
        FIGURES,
    params:
        spec=json.dumps(config["plots"], sort_keys=True),
        code=package_hash("plots"),
    log:
        f"{R}/logs/figures.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe figures --spec {params.spec:q} --tables {R:q}/tables"
        " --out {R:q}/figures 2> {log:q}"
