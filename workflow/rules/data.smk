rule prepare_data:
    output:
        **STUDY.data_files("{dataset}"),
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=lambda w: config["datasets"][w.dataset]["resources"]["mem_mb"],
        runtime=lambda w: config["datasets"][w.dataset]["resources"]["runtime"],
    params:
        spec=lambda w: json.dumps(STUDY.dataset_spec(w.dataset), sort_keys=True),
        raw=lambda w: STUDY.raw_dir(w.dataset),
    shell:
        "python -m kdpipe prepare-data --spec {params.spec:q} --raw-dir {params.raw:q}"
        " --out {output.data:q} --labels-out {output.labels:q} 2> {log:q}"
