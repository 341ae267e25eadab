# kdpipe: knowledge distillation audited against random and same-init controls.
#   snakemake --cores all                                 the default study (config/config.yaml)
#   snakemake --cores all --configfile config/paper.yaml  the full study
# Stages: data -> teacher -> students -> tables -> statistics -> figures (workflow/rules/).

# The default study, only when no --configfile is given: Snakemake would otherwise merge a
# user's config into it (every study would also train the default setups).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        TABLES,
        FIGURES,
        AUDIT_TABLES,
        AUDIT_FIGURES,
        # rebuilt when lost (a job whose outputs exist does not rerun for a missing input): the
        # teachers, and the block manifests, whose removal retrains a block's lost students
        STUDY.every_teacher_file(),
        STUDY.manifests(),
