# kd and rcd of one (setup, alpha, T, width, seed) train in one job on identical batches, and so
# do kd-masked and rcd-masked (our addition; `variant` is "" or "-masked"); siddo does not
# depend on alpha or T, so it is one job per (setup, width, seed).

TEACHER = f"{R}/{{setup}}/teacher"


def distillation_methods(w):
    """The job's two students: kd{variant} and its random control rcd{variant}."""
    common = {"alpha": float(w.alpha), "temperature": float(w.temperature)}
    masked = {"incorrect_weight": config["kd_masked"]["incorrect_weight"]} if w.variant else {}
    return [{"method": f"kd{w.variant}", **common, **masked},
            {"method": f"rcd{w.variant}", **common, **masked, "noise": config["rcd"]}]


rule train_kd_rcd:
    input:
        data=data_file,
        labels=labels_file,
        teacher=f"{TEACHER}/row.json",
    output:
        kd_logits=f"{R}/{{setup}}/kd{{variant}}/{PAIR}/logits.npy",
        kd_row=f"{R}/{{setup}}/kd{{variant}}/{PAIR}/row.json",
        rcd_logits=f"{R}/{{setup}}/rcd{{variant}}/{PAIR}/logits.npy",
        rcd_row=f"{R}/{{setup}}/rcd{{variant}}/{PAIR}/row.json",
    params:
        spec=lambda w: training_spec(w, width=float(w.width), seed=int(w.seed),
                                     methods=distillation_methods(w)),
        args=cpu_args(),
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    group:
        STUDENTS
    log:
        f"{R}/logs/train_kd_rcd/{{setup}}/{PAIR}{{variant}}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe train-students --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --teacher $(dirname {input.teacher:q})"
        " --out kd{wildcards.variant}=$(dirname {output.kd_row:q})"
        " --out rcd{wildcards.variant}=$(dirname {output.rcd_row:q})"
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
