TABLE_NAMES = ["models", "stats", "claims", "asymmetry", "scaling", "history"]
TABLES = expand(
    f"{R}/tables/{{name}}.{{ext}}", name=TABLE_NAMES, ext=["parquet", "csv"]
)


rule collect:
    input:
        teachers=STUDY.teacher_rows(),
        blocks=STUDY.manifests(),
        # read through the rows: declared, so that a lost one is rebuilt before collect runs
        teacher_logits=STUDY.every_teacher_file("logits"),
        labels=STUDY.labels_files(),
    output:
        models=f"{R}/tables/models.parquet",
        csv=f"{R}/tables/models.csv",
        history=f"{R}/tables/history.parquet",
        history_csv=f"{R}/tables/history.csv",
        rows=temp(f"{R}/tables/models.rows.txt"),
        manifests=temp(f"{R}/tables/models.blocks.txt"),
    log:
        f"{R}/logs/collect.log",
    params:
        results=lambda w, output: Path(output.models).parent.parent,
        # collect computes the calibration error from the logits: a new bin count reruns it
        spec=json.dumps({"ece_bins": config["stats"]["ece_bins"]}),
    run:
        write_lines(output.rows, input.teachers)
        write_lines(output.manifests, input.blocks)
        shell(
            "python -m kdpipe collect --rows-file {output.rows:q}"
            " --manifests-file {output.manifests:q} --results {params.results:q}"
            " --spec {params.spec:q} --out {output.models:q}"
            " --history-out {output.history:q} 2> {log:q}"
        )


rule statistics:
    input:
        models=f"{R}/tables/models.parquet",
    output:
        expand(
            f"{R}/tables/{{name}}.{{ext}}",
            name=["claims", "asymmetry", "scaling"],
            ext=["parquet", "csv"],
        ),
        f"{R}/tables/stats.parquet",
        report(
            f"{R}/tables/stats.csv",
            caption="../report/stats.rst",
            category="Mann-Whitney tests",
        ),
    log:
        f"{R}/logs/statistics.log",
    conda:
        CONDA_ENV
    params:
        spec=STUDY.stats_spec(),
        code=package_hash("stats"),
    shell:
        "python -m kdpipe stats --spec {params.spec:q} --out $(dirname {input.models:q}) 2> {log:q}"
