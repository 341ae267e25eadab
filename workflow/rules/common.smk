# Configuration checks, job lists and paths. No science here: the kdpipe package holds it.
import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

from kdpipe.digests import NEUTRAL, without_neutral


def validate_config(config, schema_path):
    """Fill schema defaults and stop on the first problem, naming the key and the value."""
    schema = yaml.safe_load(open(schema_path))
    validator_class = jsonschema.validators.validator_for(schema)

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, json.loads(json.dumps(sub["default"])))
        yield from validator_class.VALIDATORS["properties"](
            validator, properties, instance, schema
        )

    filling = jsonschema.validators.extend(
        validator_class, {"properties": fill_defaults}
    )
    error = jsonschema.exceptions.best_match(filling(schema).iter_errors(config))
    if error is not None:
        key = "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        key = key.lstrip(".") or "(top level)"
        raise WorkflowError(
            f"config error at {key}: {error.message} (value: {json.dumps(error.instance)})"
        )
    masked = config["kd_masked"]
    if (
        masked["enabled"]
        and masked["mode"] == "classes"
        and masked["incorrect_weight"] == 0
    ):
        raise WorkflowError(
            "config error at kd_masked.incorrect_weight: 0 with mode classes makes the KD target "
            "one-hot on the label, so kd-masked and rcd-masked would be plain cross-entropy like "
            "siddo; use a weight > 0 or mode samples"
        )
    recipe_validator = filling(schema["definitions"]["recipe"])
    for name, setup in config["setups"].items():
        if setup["dataset"] not in config["datasets"]:
            raise WorkflowError(
                f"config error at setups.{name}.dataset: unknown dataset {setup['dataset']!r}; "
                f"defined in datasets: {', '.join(config['datasets'])}"
            )
        for teacher, overrides in setup["teachers"].items():
            recipe = {**setup["recipe"], **overrides.get("recipe", {})}
            error = jsonschema.exceptions.best_match(
                recipe_validator.iter_errors(recipe)
            )
            if error is not None:
                raise WorkflowError(
                    f"config error at setups.{name}.teachers.{teacher}.recipe: {error.message}"
                )


validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
# seeds too few for any test to reject are allowed (a trial run), but said before any job
from kdpipe import power

if (seeds_warning := power.seeds_warning(config)) is not None:
    print(seeds_warning, file=sys.stderr)

R = config["results"]
# importing torch._dynamo (every optimizer does) creates a compile cache folder, by default in
# /tmp: keep it with Snakemake's own state so that a run leaves nothing behind in /tmp
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.abspath(".snakemake/torchinductor")
)
CONDA_ENV = "../../envs/kdpipe.yaml"  # used only under --sdm conda


def num(x):
    """A number as it appears in paths, losslessly (the shortest text that reads back as the same
    float, so that two values never share a path): 0.1 -> '0.1', 1.0 -> '1', 0.5000001 ->
    '0.5000001'."""
    return repr(float(x)).removesuffix(".0")


ALPHAS = [num(a) for a in config["alphas"]]
TEMPERATURES = [num(t) for t in config["temperatures"]]
WIDTHS = [num(w) for w in config["widths"]]
SEEDS = [str(s) for s in config["seeds"]]
SETUPS = list(config["setups"])


wildcard_constraints:
    setup="|".join(map(re.escape, SETUPS)),
    dataset="[^/]+",
    teacher="[A-Za-z][A-Za-z0-9_.]*",
    block="[A-Za-z0-9_.+-]+",


# the method registry: standard library only, cheap to import at parse time
from kdpipe import methods

# every (setup, teacher): a teacher's files are in results/<setup>/<teacher>/, its students below
SETUP_TEACHERS = [
    (setup, teacher)
    for setup in SETUPS
    for teacher in config["setups"][setup]["teachers"]
]
TEACHER = f"{R}/{{setup}}/{{teacher}}"
METHODS = methods.enabled(config)


def run_name(method, alpha, temperature, width, seed):
    """A student's folder below its method's: what it depends on among alpha, T, width, seed."""
    m = methods.method(method)
    return "".join(
        [
            f"a{alpha}_" if m.uses_alpha else "",
            f"T{temperature}_" if m.uses_temperature else "",
            f"w{width}_s{seed}",
        ]
    )


def students_of(setup, width, seed):
    """Every student of one (setup, width, seed), grouped by the (alpha, T) it depends on
    (None for what does not depend on it): {(alpha, T): [student, ...]}."""
    options = {
        "noise": config["rcd"],
        "stage": config["setups"][setup].get("fm_stage"),
        "masked": {k: config["kd_masked"][k] for k in ("mode", "incorrect_weight")},
    }
    groups = {}
    for name in METHODS:
        m = methods.method(name)
        extra = {
            **({"noise": options["noise"]} if m.uses_noise else {}),
            **(options["masked"] if m.masked else {}),
            **({"stage": options["stage"]} if m.loss == "stage-mse" else {}),
        }
        alphas = ALPHAS if m.uses_alpha else [None]
        temperatures = TEMPERATURES if m.uses_temperature else [None]
        for alpha in alphas:
            for temperature in temperatures:
                student = {
                    "method": name,
                    "seed": int(seed),
                    "run": run_name(name, alpha, temperature, width, seed),
                    **extra,
                }
                if alpha is not None:
                    student["alpha"] = float(alpha)
                if temperature is not None:
                    student["temperature"] = float(temperature)
                groups.setdefault((alpha, temperature), []).append(student)
    return groups


def setup_blocks(setup):
    """The setup's training jobs, the same for each of its teachers: block name -> (width,
    students). Packed: every student of `block.seeds` seeds at a time (a setup's block_seeds
    overrides it) per width; split_runs: one job per (alpha, T, width, seed), siddo one per
    (width, seed)."""
    blocks = {}
    seeds_per_job = config["setups"][setup].get("block_seeds", config["block"]["seeds"])
    for width in WIDTHS:
        if config["block"]["split_runs"]:
            for seed in SEEDS:
                for (alpha, temperature), students in students_of(
                    setup, width, seed
                ).items():
                    name = run_name(
                        students[0]["method"], alpha, temperature, width, seed
                    )
                    blocks[
                        (
                            f"{students[0]['method']}_{name}"
                            if alpha is None or temperature is None
                            else name
                        )
                    ] = (width, students)
            continue
        for first in range(0, len(SEEDS), seeds_per_job):
            chunk = SEEDS[first : first + seeds_per_job]
            students = [
                s
                for seed in chunk
                for group in students_of(setup, width, seed).values()
                for s in group
            ]
            blocks[f"w{width}_s{chunk[0]}-{chunk[-1]}"] = (width, students)
    return blocks


BLOCKS = {setup: setup_blocks(setup) for setup in SETUPS}


def block_manifests():
    return [
        f"{R}/{setup}/{teacher}/blocks/{block}.json"
        for setup, teacher in SETUP_TEACHERS
        for block in BLOCKS[setup]
    ]


def block_priority(wildcards):
    """Larger blocks start first, so that the jobs left running at the end are short ones and
    no core idles while one long block finishes: a block's work grows with its students and,
    roughly, the square of its width (parameters of the hidden layers)."""
    width, students = BLOCKS[wildcards.setup][wildcards.block]
    return len(students) * float(width) ** 2


def siddo_owner(wildcards):
    """The teacher of this setup whose siddo students this teacher shares: the first, in config
    order, with the same teacher seed (siddo depends on theta0, not on the trained teacher).
    """
    seed = teacher_seed(wildcards)
    teachers = config["setups"][wildcards.setup]["teachers"]
    return next(t for t in teachers if teacher_seed(wildcards, t) == seed)


def shared_siddo(wildcards):
    """The owner's manifest of this block where this teacher references the owner's siddo
    students, else nothing."""
    owner = siddo_owner(wildcards)
    _, students = BLOCKS[wildcards.setup][wildcards.block]
    if owner == wildcards.teacher or not any(s["method"] == "siddo" for s in students):
        return []
    return [f"{R}/{wildcards.setup}/{owner}/blocks/{wildcards.block}.json"]


def block_spec(wildcards):
    width, students = BLOCKS[wildcards.setup][wildcards.block]
    return training_spec(wildcards, width=float(width), students=students)


def siddo_args(wildcards):
    shared = shared_siddo(wildcards)
    return f"--siddo-from {Path(shared[0]).parent.parent}" if shared else ""


def teacher_rows():
    return [f"{R}/{setup}/{teacher}/row.json" for setup, teacher in SETUP_TEACHERS]


def setup_of(wildcards):
    return config["setups"][wildcards.setup]


def data_file(wildcards):
    return f"{R}/data/{setup_of(wildcards)['dataset']}.pt"


def labels_file(wildcards):
    return f"{R}/data/{setup_of(wildcards)['dataset']}.labels.npy"


def training_spec(wildcards, recipe=None, **extra):
    """What a training job depends on, as JSON: its params, hence its rerun trigger. The recipe's
    settings at their neutral values are left out (kdpipe.digests)."""
    setup = setup_of(wildcards)
    spec = {
        "setup": wildcards.setup,
        "dataset": setup["dataset"],
        "arch": setup["arch"],
        "teacher_id": f"{wildcards.setup}/{wildcards.teacher}",
        "data": dataset_spec(setup["dataset"]),
        "recipe": without_neutral(recipe or setup["recipe"], NEUTRAL["recipe"]),
        **extra,
    }
    return json.dumps(spec, sort_keys=True)


def teacher_recipe(wildcards):
    """The setup's recipe with the teacher's overrides (other epochs, target loss, ...)."""
    setup = setup_of(wildcards)
    return {**setup["recipe"], **setup["teachers"][wildcards.teacher].get("recipe", {})}


def teacher_seed(wildcards, teacher=None):
    setup = setup_of(wildcards)
    return setup["teachers"][teacher or wildcards.teacher].get(
        "seed", setup["teacher_seed"]
    )


def package_hash(module):
    """A digest of a kdpipe module's source: editing the statistics or plotting code reruns those
    cheap steps; training code is not tracked (docs/reruns.md: forcing a rerun)."""
    origin = importlib.util.find_spec(f"kdpipe.{module}").origin
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]


# gpu, mem_mb and runtime (minutes) of a training job, from its setup's `resources`
TRAINING_RESOURCES = {
    name: lambda wildcards, name=name: setup_of(wildcards)["resources"][name]
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


def dataset_spec(name):
    """What prepare-data reads of a dataset's entry: its resources are the cluster's business."""
    return {key: config["datasets"][name][key] for key in ("family", "options")}


def write_lines(path, lines):
    """A list of paths as a file: thousands of them exceed a shell argument's limit."""
    Path(path).write_text("".join(f"{line}\n" for line in lines))


def figure_file(stem, ext):
    """A figure's path; the first format of each figure also goes into `snakemake --report`,
    with its caption (workflow/report/figN.rst), grouped by setup."""
    path = f"{R}/figures/{stem}.{ext}"
    if ext != config["plots"]["formats"][0]:
        return path
    setup = next((s for s in SETUPS if stem.endswith(f"_{s}")), "all setups")
    caption = Path(workflow.basedir, "workflow/report", f"{stem.split('_')[0]}.rst")
    return report(path, caption=str(caption), category="Figures", subcategory=setup)
