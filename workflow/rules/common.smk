# Configuration checks, job lists and paths. No science here: the kdpipe package holds it.
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError


def validate_config(config, schema_path):
    """Fill schema defaults and stop on the first problem, naming the key and the value."""
    schema = yaml.safe_load(open(schema_path))
    validator_class = jsonschema.validators.validator_for(schema)

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, json.loads(json.dumps(sub["default"])))
        yield from validator_class.VALIDATORS["properties"](validator, properties, instance, schema)

    filling = jsonschema.validators.extend(validator_class, {"properties": fill_defaults})
    error = jsonschema.exceptions.best_match(filling(schema).iter_errors(config))
    if error is not None:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        key = key.lstrip(".") or "(top level)"
        raise WorkflowError(
            f"config error at {key}: {error.message} (value: {json.dumps(error.instance)})")
    masked = config["kd_masked"]
    if masked["enabled"] and masked["mode"] == "classes" and masked["incorrect_weight"] == 0:
        raise WorkflowError(
            "config error at kd_masked.incorrect_weight: 0 with mode classes makes the KD target "
            "one-hot on the label, so kd-masked and rcd-masked would be plain cross-entropy like "
            "siddo; use a weight > 0 or mode samples")
    recipe_validator = filling(schema["definitions"]["recipe"])
    for name, setup in config["setups"].items():
        if setup["dataset"] not in config["datasets"]:
            raise WorkflowError(
                f"config error at setups.{name}.dataset: unknown dataset {setup['dataset']!r}; "
                f"defined in datasets: {', '.join(config['datasets'])}")
        for teacher, overrides in setup["teachers"].items():
            recipe = {**setup["recipe"], **overrides.get("recipe", {})}
            error = jsonschema.exceptions.best_match(recipe_validator.iter_errors(recipe))
            if error is not None:
                raise WorkflowError(
                    f"config error at setups.{name}.teachers.{teacher}.recipe: {error.message}")


validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))

R = config["results"]
# importing torch._dynamo (every optimizer does) creates a compile cache folder, by default in
# /tmp: keep it with Snakemake's own state so that a run leaves nothing behind in /tmp
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.abspath(".snakemake/torchinductor"))
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
    alpha="[0-9.e+-]+",
    temperature="[0-9.e+-]+",
    width="[0-9.e+-]+",
    seed="[0-9]+",
    teacher="[A-Za-z][A-Za-z0-9_.]*",
    variant="|-masked",

PAIR = "a{alpha}_T{temperature}_w{width}_s{seed}"
SIDDO = "w{width}_s{seed}"
FM_RUN = "a{alpha}_w{width}_s{seed}"
# every (setup, teacher): a teacher's files are in results/<setup>/<teacher>/, its students below
SETUP_TEACHERS = [(setup, teacher) for setup in SETUPS
                  for teacher in config["setups"][setup]["teachers"]]
TEACHER = f"{R}/{{setup}}/{{teacher}}"


VARIANTS = [""] + (["-masked"] if config["kd_masked"]["enabled"] else [])


def student_rows():
    methods = [f"{m}{v}" for v in VARIANTS for m in ("kd", "rcd")]
    rows = []
    for setup, teacher in SETUP_TEACHERS:
        folder = f"{R}/{setup}/{teacher}"
        rows += expand(f"{folder}/{{method}}/{PAIR}/row.json", method=methods, alpha=ALPHAS,
                       temperature=TEMPERATURES, width=WIDTHS, seed=SEEDS)
        rows += expand(f"{folder}/siddo/{SIDDO}/row.json", width=WIDTHS, seed=SEEDS)
        if config["feature_matching"]["enabled"]:
            rows += expand(f"{folder}/{{method}}/{FM_RUN}/row.json", method=["fm", "fm-rcd"],
                           alpha=ALPHAS, width=WIDTHS, seed=SEEDS)
    return rows


def teacher_rows():
    return [f"{R}/{setup}/{teacher}/row.json" for setup, teacher in SETUP_TEACHERS]


def setup_of(wildcards):
    return config["setups"][wildcards.setup]


def data_file(wildcards):
    return f"{R}/data/{setup_of(wildcards)['dataset']}.pt"


def labels_file(wildcards):
    return f"{R}/data/{setup_of(wildcards)['dataset']}.labels.npy"


def training_spec(wildcards, recipe=None, **extra):
    """What a training job depends on, as JSON: its params, hence its rerun trigger."""
    setup = setup_of(wildcards)
    spec = {"setup": wildcards.setup, "dataset": setup["dataset"], "arch": setup["arch"],
            "teacher_id": f"{wildcards.setup}/{wildcards.teacher}",
            "recipe": recipe or setup["recipe"], **extra}
    return json.dumps(spec, sort_keys=True)


def teacher_recipe(wildcards):
    """The setup's recipe with the teacher's overrides (other epochs, target loss, ...)."""
    setup = setup_of(wildcards)
    return {**setup["recipe"], **setup["teachers"][wildcards.teacher].get("recipe", {})}


def teacher_seed(wildcards):
    setup = setup_of(wildcards)
    return setup["teachers"][wildcards.teacher].get("seed", setup["teacher_seed"])


def package_hash(module):
    """A digest of a kdpipe module's source: editing the statistics or plotting code reruns those
    cheap steps; training code is not tracked (see README: forcing a rerun)."""
    origin = importlib.util.find_spec(f"kdpipe.{module}").origin
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]


# gpu, mem_mb and runtime (minutes) of a training job, from its setup's `resources`
TRAINING_RESOURCES = {
    name: lambda wildcards, name=name: setup_of(wildcards)["resources"][name]
    for name in ("gpu", "mem_mb", "runtime")
}


# Student jobs form one Snakemake group: a cluster run packs `--group-components students=K`
# of them into one allocation (slurm/profile.yaml sets K); local runs ignore groups.
STUDENTS = "students"


def cpu_args():
    return f"--threads {config['threads']} --device {config['device']} --results {R}"


# Not params: where and how often to checkpoint does not change results (no rerun trigger).
CHECKPOINTS = f"--checkpoint-dir {R}/checkpoints --checkpoint-every {config['checkpoint_every']}"


onstart:
    if config["fork_server"] and workflow.local_exec:
        import os, tempfile
        from kdpipe import server
        from kdpipe.cli import PRELOAD

        socket_path = os.path.join(tempfile.mkdtemp(prefix="kdpipe-"), "server.sock")
        workflow.globals["FORK_SERVER"] = (server.start(socket_path, PRELOAD), socket_path)
        os.environ["KDPIPE_SERVER"] = socket_path


def stop_fork_server():
    running = workflow.globals.get("FORK_SERVER")
    if running:
        from kdpipe import server

        server.stop(*running)


onsuccess:
    stop_fork_server()


onerror:
    stop_fork_server()
