rule train_teacher:
    input:
        data=data_file,
        labels=labels_file,
    output:
        init=f"{TEACHER}/init.pt",
        weights=f"{TEACHER}/model.pt",
        train_logits=f"{TEACHER}/train_logits.npy",
        logits=f"{TEACHER}/logits.npy",
        row=f"{TEACHER}/row.json",
    log:
        f"{R}/logs/train_teacher/{{setup}}/{{teacher}}.log",
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    params:
        spec=lambda w: training_spec(w, recipe=teacher_recipe(w), seed=teacher_seed(w)),
        args=cpu_args(),
    shell:
        "python -m kdpipe train-teacher --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --out $(dirname {output.row:q}) {params.args} 2> {log:q}"
