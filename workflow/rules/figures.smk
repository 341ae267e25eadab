from kdpipe.methods import figure_stems

def figure_file(stem, ext):
    """A figure's path; the first format of each figure also goes into `snakemake --report`,
    with its caption (workflow/report/figN.rst), grouped by setup."""
    path = f"{R}/figures/{stem}.{ext}"
    if ext != config["plots"]["formats"][0]:
        return path
    setup = next((s for s in SETUPS if stem.endswith(f"_{s}")), "all setups")
    caption = Path(workflow.basedir, "workflow/report", f"{stem.split('_')[0]}.rst")
    return report(path, caption=str(caption), category="Figures", subcategory=setup)


STEMS = figure_stems(SETUPS, config["temperatures"], METHODS)
FIGURES = [figure_file(stem, ext) for stem in STEMS for ext in config["plots"]["formats"]]


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


AUDIT_TABLES = expand(f"{R}/tables/{{name}}.{{ext}}", name=["teacher_errors", "copied_errors"],
                      ext=["parquet", "csv"])
AUDIT_FIGURES = [figure_file(stem, ext) for stem in [f"audit_{setup}" for setup in SETUPS]
                 for ext in config["plots"]["formats"]]


rule audit:
    input:
        f"{R}/tables/models.parquet",
    output:
        AUDIT_TABLES,
        AUDIT_FIGURES,
    params:
        spec=json.dumps(config["plots"], sort_keys=True),
        code=package_hash("audit"),
    threads: 4  # one process per setup's figure, up to this many
    log:
        f"{R}/logs/audit.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe audit --spec {params.spec:q} --tables {R:q}/tables --results {R:q}"
        " --out {R:q}/figures 2> {log:q}"
