# kd and rcd of one (setup, alpha, T, width, seed) train in one job on identical batches, and so
# do kd-masked and rcd-masked (our addition; `variant` is "" or "-masked"); siddo does not
# depend on alpha or T, so it is one job per (setup, width, seed).


def distillation_methods(w):
    """The job's two students: kd{variant} and its random control rcd{variant}."""
    common = {"alpha": float(w.alpha), "temperature": float(w.temperature)}
    masked = {key: config["kd_masked"][key] for key in ("mode", "incorrect_weight")} \
        if w.variant else {}
    return [{"method": f"kd{w.variant}", **common, **masked},
            {"method": f"rcd{w.variant}", **common, **masked, "noise": config["rcd"]}]


rule train_kd_rcd:
    input:
        data=data_file,
        labels=labels_file,
        teacher=f"{TEACHER}/row.json",
    output:
        kd_logits=f"{TEACHER}/kd{{variant}}/{PAIR}/logits.npy",
        kd_row=f"{TEACHER}/kd{{variant}}/{PAIR}/row.json",
        rcd_logits=f"{TEACHER}/rcd{{variant}}/{PAIR}/logits.npy",
        rcd_row=f"{TEACHER}/rcd{{variant}}/{PAIR}/row.json",
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
        f"{R}/logs/train_kd_rcd/{{setup}}/{{teacher}}/{PAIR}{{variant}}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe train-students --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --teacher $(dirname {input.teacher:q})"
        " --out kd{wildcards.variant}=$(dirname {output.kd_row:q})"
        " --out rcd{wildcards.variant}=$(dirname {output.rcd_row:q})"
        " {params.args} {CHECKPOINTS} 2> {log:q}"


# Feature-map matching: fm (FitNets-style MSE on a named stage's output, weighted by alpha) and
# its random control fm-rcd, per (setup, alpha, width, seed); no temperature.

def feature_matching_methods(w):
    common = {"alpha": float(w.alpha), "stage": setup_of(w).get("fm_stage")}
    return [{"method": "fm", **common}, {"method": "fm-rcd", **common, "noise": config["rcd"]}]


rule train_fm:
    input:
        data=data_file,
        labels=labels_file,
        teacher=f"{TEACHER}/row.json",
    output:
        fm_logits=f"{TEACHER}/fm/{FM_RUN}/logits.npy",
        fm_row=f"{TEACHER}/fm/{FM_RUN}/row.json",
        control_logits=f"{TEACHER}/fm-rcd/{FM_RUN}/logits.npy",
        control_row=f"{TEACHER}/fm-rcd/{FM_RUN}/row.json",
    params:
        spec=lambda w: training_spec(w, width=float(w.width), seed=int(w.seed),
                                     methods=feature_matching_methods(w)),
        args=cpu_args(),
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    group:
        STUDENTS
    log:
        f"{R}/logs/train_fm/{{setup}}/{{teacher}}/{FM_RUN}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe train-students --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --teacher $(dirname {input.teacher:q})"
        " --out fm=$(dirname {output.fm_row:q}) --out fm-rcd=$(dirname {output.control_row:q})"
        " {params.args} {CHECKPOINTS} 2> {log:q}"


rule train_siddo:
    input:
        data=data_file,
        labels=labels_file,
        teacher=f"{TEACHER}/row.json",
    output:
        logits=f"{TEACHER}/siddo/{SIDDO}/logits.npy",
        row=f"{TEACHER}/siddo/{SIDDO}/row.json",
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
        f"{R}/logs/train_siddo/{{setup}}/{{teacher}}/{SIDDO}.log",
    conda:
        CONDA_ENV
    shell:
        "python -m kdpipe train-students --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --teacher $(dirname {input.teacher:q})"
        " --out siddo=$(dirname {output.row:q}) {params.args} {CHECKPOINTS} 2> {log:q}"
