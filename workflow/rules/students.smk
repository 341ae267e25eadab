# Students train in blocks: one job trains every student of one (setup, teacher, width) for a
# block of seeds (config `block`), so that a job is sized to the work, not to one tiny model.
# Each student's folder <teacher>/<method>/<run>/ is not a declared output (how many there are
# depends on the config, and Snakemake would delete them before a rerun): it is the store of
# finished students, each row.json carrying a digest of the student's settings, and a rerun of
# a block trains only the students without a matching row (kdpipe/jobs.py). The declared output
# is the block's manifest, which lists its students' rows for the collect step.


rule train_block:
    input:
        unpack(setup_data),
        # every file of the teacher the job reads: a lost one is rebuilt before the job runs
        **STUDY.teacher_files("{setup}", "{teacher}"),
        shared_siddo=lambda w: STUDY.shared_siddo(w.setup, w.teacher, w.block) or [],
    output:
        manifest=STUDY.manifest("{setup}", "{teacher}", "{block}"),
    log:
        f"{R}/logs/train_block/{{setup}}/{{teacher}}/{{block}}.log",
    priority: lambda w: STUDY.block_priority(w.setup, w.block)
    group:
        STUDENTS
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        **TRAINING_RESOURCES,
    params:
        spec=lambda w: STUDY.block_spec(w.setup, w.teacher, w.block),
        siddo=siddo_args,
        args=cpu_args(),
    # exec: the job is snakemake's own child, and stops when snakemake has ended (kdpipe.jobs)
    shell:
        "exec python -m kdpipe train-block --spec {params.spec:q} --data {input.data:q}"
        " --labels {input.labels:q} --teacher $(dirname {input.row:q})"
        " --manifest {output.manifest:q} {params.siddo} {params.args} 2> {log:q}"
