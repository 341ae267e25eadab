rule train_teacher:
    input:
        data=data_file,
        labels=labels_file,
    output:
        init=f"{R}/{{setup}}/teacher/init.pt",
        weights=f"{R}/{{setup}}/teacher/model.pt",
        train_logits=f"{R}/{{setup}}/teacher/train_logits.npy",
        logits=f"{R}/{{setup}}/teacher/logits.npy",
        row=f"{R}/{{setup}}/teacher/row.json",
    params:
        spec=lambda w: training_spec(w, seed=setup_of(w)["teacher_seed"]),
        args=cpu_args(),
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    log:
        f"{R}/logs/train_teacher/{{setup}}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe train-teacher --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --out $(dirname {output.row:q}) {params.args} {CHECKPOINTS} 2> {log:q}"
