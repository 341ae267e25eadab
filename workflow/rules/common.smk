# The study's plan, from the package (kdpipe.config, kdpipe.plan: standard library, yaml and
# jsonschema only, cheap to import at parse time), and what only a workflow needs. No science
# here: the kdpipe package holds it.
import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from kdpipe import config as study_config, power, store
from kdpipe.plan import Study

try:
    config.update(
        study_config.validate(
            config, workflow.source_path("../schemas/config.schema.yaml")
        )
    )
except study_config.ConfigError as error:
    raise WorkflowError(str(error)) from None
# seeds too few for any test to reject are allowed (a trial run), but said before any job (once:
# not again in every cluster job, which re-parses the Snakefile)
if workflow.is_main_process and (seeds_warning := power.seeds_warning(config)):
    print(seeds_warning, file=sys.stderr)

STUDY = Study(config)
R = STUDY.results
# Finished students and a teacher's theta0 are not Snakemake outputs: one lost after its job
# finished would go unnoticed, so every run checks them (stats only), here since onstart is not
# called when nothing is to be done; cluster jobs re-parse the Snakefile and skip it.
if workflow.is_main_process and (
    lost := store.lost_message(
        store.lost_student_files(STUDY.manifests(), R, config["check_student_logits"]),
        store.lost_teacher_inits(STUDY.teacher_inits()),
    )
):
    raise WorkflowError(lost)
# importing torch._dynamo (every optimizer does) creates a compile cache folder, by default in
# /tmp: keep it with Snakemake's own state so that a run leaves nothing behind in /tmp
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.abspath(".snakemake/torchinductor")
)
CONDA_ENV = "../../envs/kdpipe.yaml"  # used only under --sdm conda


wildcard_constraints:
    setup="|".join(map(re.escape, STUDY.setups)),
    dataset="[^/]+",
    teacher="[A-Za-z][A-Za-z0-9_.]*",
    block="[A-Za-z0-9_.+-]+",


def setup_data(wildcards):
    """The prepared dataset and test labels of the wildcards' setup, as named inputs."""
    return STUDY.data_files(STUDY.dataset_of(wildcards.setup))


def siddo_args(wildcards):
    shared = STUDY.shared_siddo(wildcards.setup, wildcards.teacher, wildcards.block)
    return f"--siddo-from {Path(shared).parent.parent}" if shared else ""


def package_hash(module):
    """A digest of a kdpipe module's source: editing the statistics or plotting code reruns those
    cheap steps; training code is not tracked (see README: forcing a rerun)."""
    origin = importlib.util.find_spec(f"kdpipe.{module}").origin
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]


# gpu, mem_mb and runtime (minutes) of a training job, from its setup's `resources`
TRAINING_RESOURCES = {
    name: lambda wildcards, name=name: STUDY.resources(wildcards.setup)[name]
    for name in ("gpu", "mem_mb", "runtime")
}


# Block jobs form one Snakemake group: a cluster run may pack `--group-components students=K`
# of them into one allocation (see slurm/profile.yaml); local runs ignore groups.
STUDENTS = "students"


def cpu_args():
    """How a training job runs: threads, device, results folder and checkpoints. A params value,
    so editing one of them reruns the training jobs: block jobs find their students finished and
    only rewrite their manifests, teachers retrain."""
    return (
        f"--threads {config['threads']} --device {config['device']} --results {R}"
        f" --checkpoint-dir {R}/checkpoints --checkpoint-every {config['checkpoint_every']}"
    )


def write_lines(path, lines):
    """A list of paths as a file: thousands of them exceed a shell argument's limit."""
    Path(path).write_text("".join(f"{line}\n" for line in lines))


def figure_file(stem, ext):
    """A figure's path; the first format of each figure also goes into `snakemake --report`,
    with its caption (workflow/report/figN.rst), grouped by setup."""
    path = f"{R}/figures/{stem}.{ext}"
    if ext != config["plots"]["formats"][0]:
        return path
    setup = next((s for s in STUDY.setups if stem.endswith(f"_{s}")), "all setups")
    caption = Path(workflow.basedir, "workflow/report", f"{stem.split('_')[0]}.rst")
    return report(path, caption=str(caption), category="Figures", subcategory=setup)
