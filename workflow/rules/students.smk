# kd and rcd of one (setup, alpha, T, width, seed) train in one job on identical batches;
# siddo does not depend on alpha or T, so it is one job per (setup, width, seed).

TEACHER = f"{R}/{{setup}}/teacher"


rule train_kd_rcd:
    input:
        data=data_file,
        labels=labels_file,
        teacher=f"{TEACHER}/row.json",
    output:
        kd_logits=f"{R}/{{setup}}/kd/{PAIR}/logits.npy",
        kd_row=f"{R}/{{setup}}/kd/{PAIR}/row.json",
        rcd_logits=f"{R}/{{setup}}/rcd/{PAIR}/logits.npy",
        rcd_row=f"{R}/{{setup}}/rcd/{PAIR}/row.json",
    params:
        spec=lambda w: training_spec(
            w, width=float(w.width), seed=int(w.seed), methods=[
                {"method": "kd", "alpha": float(w.alpha), "temperature": float(w.temperature)},
                {"method": "rcd", "alpha": float(w.alpha), "temperature": float(w.temperature),
                 "noise": config["rcd"]},
            ]),
        args=cpu_args(),
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    group:
        STUDENTS
    log:
        f"{R}/logs/train_kd_rcd/{{setup}}/{PAIR}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe train-students --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --teacher $(dirname {input.teacher:q})"
        " --out kd=$(dirname {output.kd_row:q}) --out rcd=$(dirname {output.rcd_row:q})"
        " {params.args} {CHECKPOINTS} 2> {log:q}"


rule train_siddo:
    input:
        data=data_file,
        labels=labels_file,
        teacher=f"{TEACHER}/row.json",
    output:
        logits=f"{R}/{{setup}}/siddo/{SIDDO}/logits.npy",
        row=f"{R}/{{setup}}/siddo/{SIDDO}/row.json",
    params:
        spec=lambda w: training_spec(w, width=float(w.width), seed=int(w.seed),
                                     methods=[{"method": "siddo", "alpha": 0.0}]),
        args=cpu_args(),
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    group:
        STUDENTS
    log:
        f"{R}/logs/train_siddo/{{setup}}/{SIDDO}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe train-students --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --teacher $(dirname {input.teacher:q})"
        " --out siddo=$(dirname {output.row:q}) {params.args} {CHECKPOINTS} 2> {log:q}"
