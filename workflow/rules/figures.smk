FIGURES = [
    figure_file(stem, ext)
    for stem in STUDY.figure_stems()
    for ext in config["plots"]["formats"]
]


rule figures:
    input:
        expand(f"{R}/tables/{{name}}.parquet", name=TABLE_NAMES),
    output:
        FIGURES,
    log:
        f"{R}/logs/figures.log",
    conda:
        CONDA_ENV
    params:
        spec=STUDY.plots_spec(),
        code=package_hash("plots"),
        tables=lambda w, input: Path(input[0]).parent,
        figures=lambda w, output: Path(output[0]).parent,
    shell:
        "python -m kdpipe figures --spec {params.spec:q} --tables {params.tables:q}"
        " --out {params.figures:q} 2> {log:q}"


AUDIT_TABLES = expand(
    f"{R}/tables/{{name}}.{{ext}}",
    name=["teacher_errors", "copied_errors"],
    ext=["parquet", "csv"],
)
AUDIT_FIGURES = [
    figure_file(stem, ext)
    for stem in STUDY.audit_stems()
    for ext in config["plots"]["formats"]
]


rule audit:
    input:
        models=f"{R}/tables/models.parquet",
        # read through the table's paths: declared, so that a lost one is rebuilt first
        teacher_logits=STUDY.every_teacher_file("logits"),
        labels=STUDY.labels_files(),
    output:
        AUDIT_TABLES,
        AUDIT_FIGURES,
    log:
        f"{R}/logs/audit.log",
    conda:
        CONDA_ENV
    # One CPU, so that the statistics run beside it; it renders one process per setup's
    # figure on the CPUs it may use (one after another in a one-CPU SLURM job).
    threads: 1
    params:
        spec=STUDY.plots_spec(),
        code=package_hash("audit"),
        tables=lambda w, input: Path(input.models).parent,
        results=lambda w, input: Path(input.models).parent.parent,
        figures=lambda w, output: Path(output[-1]).parent,
    shell:
        "python -m kdpipe audit --spec {params.spec:q} --tables {params.tables:q}"
        " --results {params.results:q} --out {params.figures:q} 2> {log:q}"
