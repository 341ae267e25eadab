"""The plan of a study: its teachers and students, the jobs that train them, the specs those jobs
are given and the files the study writes, all from a validated config (kdpipe.config.validate).
The workflow rules read it through thin input functions; ``Study`` holds no Snakemake.

A teacher is named by (setup, teacher): trained from its seed, or given by file (its `weights`
and, optionally, `init`). Its students, of the setup's `student_arch` (default: its `arch`) and
`widths` (default: the study's), are named by method and run name below it. Students train in
blocks: packed (the default), one job per (setup, teacher, width) and `block.seeds` seeds at a
time (a setup's `block_seeds` overrides it) training every method, alpha and temperature of
those seeds; with `block.split_runs`, one job per (alpha, T, width, seed) (siddo one per
(width, seed), fm one per (alpha, width, seed)). Each setup's blocks are the same for every one
of its teachers.

Only the standard library, and kdpipe.config's yaml and jsonschema, are imported: the Snakefile
imports this module while it is parsed.
"""
from __future__ import annotations

import hashlib
import json

from kdpipe import methods
from kdpipe.config import GIVEN
from kdpipe.digests import NEUTRAL, without_neutral
from kdpipe.store import TEACHER_FILES, TEACHER_INIT


def number(x) -> str:
    """A number as it appears in paths, losslessly (the shortest text that reads back as the same
    float, so that two values never share a path): 0.1 -> '0.1', 1.0 -> '1', 0.5000001 ->
    '0.5000001'."""
    return repr(float(x)).removesuffix(".0")


def run_name(method: str, alpha, temperature, width, seed,
             registry: methods.Registry = methods.BUILT_IN) -> str:
    """A student's folder below its method's: what it depends on among alpha, T, width and seed
    (each as ``number`` writes it)."""
    m = registry.method(method)
    return "".join([f"a{alpha}_" if m.uses_alpha else "",
                    f"T{temperature}_" if m.uses_temperature else "",
                    f"w{width}_s{seed}"])


def figures(setups: list[str], temperatures: list[float], trained=methods.ALWAYS,
            training_curves: bool = False,
            registry: methods.Registry = methods.BUILT_IN) -> list[tuple]:
    """(file name without extension, figure, setup or None, method) of every figure kdpipe.plots
    draws for these setups, temperatures and trained methods: figures 1-4 per setup for each
    trained lead method of the registry (those with STANDARD_FIGURES, drawn against their
    controls), figure 5 across setups, figure 6 per setup where several temperatures were
    trained, the figure of each trained method that has one of its own, per setup, and with
    ``training_curves`` (plots.training_curves) figure 9 per setup. The method is the one the
    figure is drawn for: the lead, or the method of its own figure.

    kd's figures are named <figure>_<setup>; another lead's <figure>-<method>_<setup> (a method's
    name has no underscore, so no two names meet)."""
    per_setup = ["fig1_functional", "fig2_payoff", "fig3_accuracy", "fig4_width"]
    leads = [name for name in registry.leads if name in trained]
    found = [(lead_stem(figure, setup, lead), figure, setup, lead)
             for lead in leads for setup in setups for figure in per_setup]
    found.append(("fig5_teacher_loss", "fig5_teacher_loss", None, methods.LEAD))
    later = [("fig6_temperature", methods.LEAD)] if len(set(temperatures)) > 1 else []
    later += [(m.figure, m.name) for m in registry.methods
              if m.figure not in (None, methods.STANDARD_FIGURES) and m.name in trained]
    later += [("fig9_training", methods.LEAD)] if training_curves else []
    return found + [(f"{figure}_{setup}", figure, setup, name) for figure, name in later
                    for setup in setups]


def lead_stem(figure: str, setup: str, lead: str) -> str:
    """The file name (without extension) of a figure drawn for a lead method."""
    return f"{figure}_{setup}" if lead == methods.LEAD else f"{figure}-{lead}_{setup}"


def figure_stems(setups: list[str], temperatures: list[float], trained=methods.ALWAYS,
                 training_curves: bool = False,
                 registry: methods.Registry = methods.BUILT_IN) -> list[str]:
    """The file names without extension of ``figures``."""
    return [found[0] for found in figures(setups, temperatures, trained, training_curves,
                                          registry)]


def audits(setups: list[str], trained=methods.ALWAYS,
           registry: methods.Registry = methods.BUILT_IN) -> list[tuple[str, str, str]]:
    """(file name without extension, setup, lead method) of the audit's figures (kdpipe.audit):
    one per setup and trained lead method, named as the lead's figures 1-4."""
    return [(lead_stem("audit", setup, lead), setup, lead)
            for lead in registry.leads if lead in trained for setup in setups]


def audit_stems(setups: list[str], trained=methods.ALWAYS,
                registry: methods.Registry = methods.BUILT_IN) -> list[str]:
    """The file names without extension of ``audits``."""
    return [stem for stem, _, _ in audits(setups, trained, registry)]


class Study:
    """The plan of the study a validated, filled config describes."""

    def __init__(self, config: dict):
        self.config = config
        self.results = config["results"]
        self.alphas = [number(a) for a in config["alphas"]]
        self.temperatures = [number(t) for t in config["temperatures"]]
        self.widths = [number(w) for w in config["widths"]]  # of setups without their own
        self.seeds = [str(s) for s in config["seeds"]]
        self.setups = list(config["setups"])
        self.registry = methods.Registry(config.get("methods"))
        self._loss_sources = {}
        self.methods = self.registry.enabled(config)
        # every (setup, teacher), in config order
        self.teachers = [(setup, teacher) for setup in self.setups
                         for teacher in config["setups"][setup]["teachers"]]
        # setup -> {block name: (width, students)}
        self.blocks = {setup: self._blocks(setup) for setup in self.setups}
        self._file_digests = {}  # path -> SHA-256 of a teacher's file, read once per plan

    # --- files ------------------------------------------------------------------------------

    def data_files(self, dataset: str) -> dict:
        """The prepared dataset and its test labels: {"data": .pt, "labels": .labels.npy}."""
        return {"data": f"{self.results}/data/{dataset}.pt",
                "labels": f"{self.results}/data/{dataset}.labels.npy"}

    def raw_dir(self, dataset: str) -> str:
        """The folder of a dataset's official raw files (or a researcher's own)."""
        return f"{self.config['data_dir']}/{dataset}"

    def teacher_dir(self, setup: str, teacher: str) -> str:
        """A teacher's folder: its weights, logits and row; its students below it."""
        return f"{self.results}/{setup}/{teacher}"

    def teacher_files(self, setup: str, teacher: str) -> dict:
        """The files a teacher's job writes and later steps read, by name (kdpipe.store)."""
        return {name: f"{self.teacher_dir(setup, teacher)}/{file}"
                for name, file in TEACHER_FILES.items()}

    def every_teacher_file(self, name: str | None = None) -> list[str]:
        """Every teacher's files (only those called ``name``, such as "logits", if given)."""
        return [path for setup, teacher in self.teachers
                for key, path in self.teacher_files(setup, teacher).items()
                if name in (None, key)]

    def teacher_inits(self) -> list[str]:
        """The initial weights of every teacher that has them (each trained one, and each given
        by file with its `init`): not a declared output, as a teacher given without them has
        none (kdpipe.store checks them)."""
        return [f"{self.teacher_dir(setup, teacher)}/{TEACHER_INIT}"
                for setup, teacher in self.teachers
                if self.given(setup, teacher) is None or "init" in self.given(setup, teacher)]

    def labels_files(self) -> list[str]:
        """The test labels of every dataset a setup uses."""
        return [self.data_files(dataset)["labels"]
                for dataset in dict.fromkeys(map(self.dataset_of, self.setups))]

    def manifest(self, setup: str, teacher: str, block: str) -> str:
        """A block's declared output, listing its students' rows."""
        return f"{self.teacher_dir(setup, teacher)}/blocks/{block}.json"

    def teacher_rows(self) -> list[str]:
        return [f"{self.teacher_dir(setup, teacher)}/row.json" for setup, teacher in self.teachers]

    def manifests(self) -> list[str]:
        return [self.manifest(setup, teacher, block) for setup, teacher in self.teachers
                for block in self.blocks[setup]]

    def figure_stems(self) -> list[str]:
        return figure_stems(self.setups, self.config["temperatures"], self.methods,
                            self.config["plots"]["training_curves"], self.registry)

    def audit_stems(self) -> list[str]:
        return audit_stems(self.setups, self.methods, self.registry)

    # --- students and blocks ----------------------------------------------------------------

    def students_of(self, setup: str, width: str, seed: str) -> dict:
        """Every student of one (setup, width, seed), grouped by the (alpha, T) it depends on
        (None for what does not depend on it): {(alpha, T): [student, ...]}. A student is the
        dict a block's spec lists: method, seed, run, alpha and temperature where it uses them,
        and its method's options (the noise of a noise target, the settings of its config
        section, the stage of a stage target, a user's loss and the digest of its file)."""
        groups = {}
        for name in self.methods:
            extra = self.options_of(name, setup)
            m = self.registry.method(name)
            for alpha in self.alphas if m.uses_alpha else [None]:
                for temperature in self.temperatures if m.uses_temperature else [None]:
                    student = {"method": name, "seed": int(seed),
                               "run": run_name(name, alpha, temperature, width, seed,
                                               self.registry), **extra}
                    if alpha is not None:
                        student["alpha"] = float(alpha)
                    if temperature is not None:
                        student["temperature"] = float(temperature)
                    groups.setdefault((alpha, temperature), []).append(student)
        return groups

    def widths_of(self, setup: str) -> list[str]:
        """The setup's student widths (as ``number`` writes them): its own, else the study's."""
        own = self.config["setups"][setup].get("widths")
        return self.widths if own is None else [number(w) for w in own]

    def student_arch(self, setup: str) -> str:
        """The architecture of the setup's students: its `student_arch`, else its `arch`."""
        entry = self.config["setups"][setup]
        return entry.get("student_arch", entry["arch"])

    def options_of(self, name: str, setup: str) -> dict:
        """What a student of method ``name`` in ``setup`` carries beside its method, seed, run,
        alpha and temperature: everything else its training depends on."""
        config, m = self.config, self.registry.method(name)
        options = {key: config[m.option][key] for key in m.settings}
        if m.uses_noise:
            options["noise"] = config[methods.NOISE_OPTIONS]
        if m.uses_stage:
            options["stage"] = config["setups"][setup].get("fm_stage")
        if m.user_loss:
            options.update(loss=m.loss, loss_source=self._loss_source(m.loss))
        return options

    def _loss_source(self, loss: str) -> str:
        """The digest of a user's loss file, read once per study (at parse time)."""
        if loss not in self._loss_sources:
            self._loss_sources[loss] = methods.loss_source(loss)
        return self._loss_sources[loss]

    def seeds_per_block(self, setup: str) -> int:
        """The seeds one packed block trains: the setup's `block_seeds`, else `block.seeds`."""
        return self.config["setups"][setup].get("block_seeds", self.config["block"]["seeds"])

    def _blocks(self, setup: str) -> dict:
        blocks = {}
        for width in self.widths_of(setup):
            if self.config["block"]["split_runs"]:
                for seed in self.seeds:
                    for (alpha, temperature), students in self.students_of(setup, width,
                                                                           seed).items():
                        method = students[0]["method"]
                        name = run_name(method, alpha, temperature, width, seed, self.registry)
                        if alpha is None or temperature is None:
                            name = f"{method}_{name}"
                        blocks[name] = (width, students)
                continue
            step = self.seeds_per_block(setup)
            for first in range(0, len(self.seeds), step):
                chunk = self.seeds[first:first + step]
                students = [s for seed in chunk
                            for group in self.students_of(setup, width, seed).values()
                            for s in group]
                blocks[f"w{width}_s{chunk[0]}-{chunk[-1]}"] = (width, students)
        return blocks

    def students(self, setup: str) -> list[dict]:
        """Every student one teacher of ``setup`` has, in block order."""
        return [s for _, students in self.blocks[setup].values() for s in students]

    def block_priority(self, setup: str, block: str) -> float:
        """Larger blocks start first, so that the jobs left running at the end are short ones and
        no core idles while one long block finishes: a block's work grows with its students and,
        roughly, the square of its width (parameters of the hidden layers)."""
        width, students = self.blocks[setup][block]
        return len(students) * float(width) ** 2

    # --- teachers ---------------------------------------------------------------------------

    def given(self, setup: str, teacher: str) -> dict | None:
        """A teacher given by file: {"weights": path, "init": path (where given)}; None for a
        teacher that is trained."""
        entry = self.config["setups"][setup]["teachers"][teacher]
        return {part: entry[part] for part in GIVEN if part in entry} if "weights" in entry \
            else None

    def teacher_source(self, setup: str, teacher: str) -> str:
        """``trained`` or ``file`` (given by file)."""
        return "trained" if self.given(setup, teacher) is None else "file"

    def file_digest(self, path: str) -> str:
        """The SHA-256 of a file's bytes (a teacher's file: in its job's spec, so that editing
        the file reruns the job)."""
        if path not in self._file_digests:
            h = hashlib.sha256()
            with open(path, "rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    h.update(chunk)
            self._file_digests[path] = h.hexdigest()
        return self._file_digests[path]

    def students_theta0(self, setup: str, teacher: str) -> tuple | None:
        """What the teacher's width-1 students start from: the theta0 drawn from its seed
        (``("seed", seed)``), the initial weights given with it (``("file", path)``), or None:
        a fresh initialisation of their (width, seed), for a teacher given without initial
        weights and for students of another architecture (theta0 has the teacher's)."""
        given = self.given(setup, teacher)
        if self.student_arch(setup) != self.config["setups"][setup]["arch"]:
            return None
        if given is None:
            return ("seed", self.teacher_seed(setup, teacher))
        return ("file", given["init"]) if "init" in given else None

    def teacher_seed(self, setup: str, teacher: str) -> int:
        entry = self.config["setups"][setup]
        return entry["teachers"][teacher].get("seed", entry["teacher_seed"])

    def teacher_recipe(self, setup: str, teacher: str) -> dict:
        """The setup's recipe with the teacher's overrides (other epochs, a target loss, ...)."""
        entry = self.config["setups"][setup]
        return {**entry["recipe"], **entry["teachers"][teacher].get("recipe", {})}

    def siddo_owner(self, setup: str, teacher: str) -> str:
        """The teacher of this setup whose siddo students this teacher shares: the first, in
        config order, whose width-1 students start from the same weights (``students_theta0``:
        siddo depends on theta0, not on the trained teacher)."""
        theta0 = self.students_theta0(setup, teacher)
        return next(t for t in self.config["setups"][setup]["teachers"]
                    if self.students_theta0(setup, t) == theta0)

    def shared_siddo(self, setup: str, teacher: str, block: str) -> str | None:
        """The owner's manifest of this block where this teacher's rows reference the owner's
        siddo students instead of training them, else None."""
        owner = self.siddo_owner(setup, teacher)
        _, students = self.blocks[setup][block]
        if owner == teacher or not any(self.registry.method(s["method"]).teacher_free
                                       for s in students):
            return None
        return self.manifest(setup, owner, block)

    # --- what the jobs are given -------------------------------------------------------------

    def dataset_of(self, setup: str) -> str:
        return self.config["setups"][setup]["dataset"]

    def dataset_spec(self, dataset: str) -> dict:
        """What prepare-data reads of a dataset's entry: its resources are the cluster's
        business."""
        return {key: self.config["datasets"][dataset][key] for key in ("family", "options")}

    def training_spec(self, setup: str, teacher: str, recipe: dict, **extra) -> str:
        """What a training job depends on, as JSON: its params, hence its rerun trigger. The
        recipe's settings at their neutral values are left out (kdpipe.digests)."""
        entry = self.config["setups"][setup]
        spec = {"setup": setup, "dataset": entry["dataset"], "arch": entry["arch"],
                "teacher_id": f"{setup}/{teacher}", "data": self.dataset_spec(entry["dataset"]),
                "recipe": without_neutral(recipe, NEUTRAL["recipe"]), **extra}
        return json.dumps(spec, sort_keys=True)

    def teacher_spec(self, setup: str, teacher: str) -> str:
        """A trained teacher's seed and recipe; a teacher given by file: its files' paths and
        SHA-256 digests, and the setup's recipe (whose eval_batch_size evaluates it)."""
        given = self.given(setup, teacher)
        if given is None:
            return self.training_spec(setup, teacher, self.teacher_recipe(setup, teacher),
                                      seed=self.teacher_seed(setup, teacher))
        files = {part: {"path": path, "sha256": self.file_digest(path)}
                 for part, path in given.items()}
        return self.training_spec(setup, teacher, self.teacher_recipe(setup, teacher),
                                  given=files)

    def block_spec(self, setup: str, teacher: str, block: str) -> str:
        """The block's students and width; ``arch`` is the students' architecture, with
        ``teacher_arch`` where the teacher's differs, ``teacher_theta0: false`` where the
        teacher has no initial weights (given by file without them), ``keep_weights`` where
        keep_student_weights is on, ``allow_chance_teacher`` where the setup sets it, and the
        user's methods where the study has any. Each
        is left out at its usual value, so that a study without them keeps its specs (their
        text is the rerun trigger)."""
        width, students = self.blocks[setup][block]
        entry, extra = self.config["setups"][setup], {}
        if self.student_arch(setup) != entry["arch"]:
            extra.update(arch=self.student_arch(setup), teacher_arch=entry["arch"])
        given = self.given(setup, teacher)
        if given is not None and "init" not in given:
            extra["teacher_theta0"] = False
        if self.config["keep_student_weights"]:
            extra["keep_weights"] = True
        if entry["allow_chance_teacher"]:
            extra["allow_chance_teacher"] = True
        return self.training_spec(setup, teacher, entry["recipe"], width=float(width),
                                  students=students, **extra, **self.user_methods())

    def user_methods(self) -> dict:
        """{"methods": the config's user methods} for a step's spec, or {} where there are
        none, so that a study without them keeps the specs (Snakemake's rerun triggers) of one
        made before they existed."""
        return {"methods": self.config["methods"]} if self.config.get("methods") else {}

    def stats_spec(self) -> str:
        """What the statistics step depends on: the stats options and the user's methods."""
        return json.dumps({**self.config["stats"], **self.user_methods()}, sort_keys=True)

    def plots_spec(self) -> str:
        """What the figures and audit steps depend on: the plots options and the user's
        methods."""
        return json.dumps({**self.config["plots"], **self.user_methods()}, sort_keys=True)

    def resources(self, setup: str) -> dict:
        """What one training job of ``setup`` asks a cluster for: gpu, mem_mb, runtime
        (minutes)."""
        return self.config["setups"][setup]["resources"]
