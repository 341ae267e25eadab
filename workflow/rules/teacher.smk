# A teacher trained from its seed, or given by file (setups.<name>.teachers.<teacher>.weights and
# init: its spec holds the files' digests, so editing one reruns the job). Its theta0, init.pt, is
# not a declared output: a teacher given without initial weights has none.
rule train_teacher:
    input:
        unpack(setup_data),
    output:
        **STUDY.teacher_files("{setup}", "{teacher}"),
    log:
        f"{R}/logs/train_teacher/{{setup}}/{{teacher}}.log",
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    params:
        spec=lambda w: STUDY.teacher_spec(w.setup, w.teacher),
        args=cpu_args(),
    # exec: the job is snakemake's own child, and stops when snakemake has ended (kdpipe.jobs)
    shell:
        "exec python -m kdpipe train-teacher --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --out $(dirname {output.row:q}) {params.args} 2> {log:q}"
