rule prepare_data:
    output:
        data=f"{R}/data/{{dataset}}.pt",
        labels=f"{R}/data/{{dataset}}.labels.npy",
    params:
        spec=lambda w: json.dumps(config["datasets"][w.dataset], sort_keys=True),
        raw=lambda w: f"{config['data_dir']}/{w.dataset}",
    log:
        f"{R}/logs/prepare_data/{{dataset}}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe prepare-data --spec {params.spec:q} --raw-dir {params.raw:q}"
        " --out {output.data:q} --labels-out {output.labels:q} 2> {log:q}"
