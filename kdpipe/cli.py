"""The command line the workflow rules call: ``python -m kdpipe <step> --help``.

Each step reads its settings as one JSON ``--spec`` (the rule passes exactly the config values the
step depends on, so Snakemake reruns a step when, and only when, one of them changes) and writes
its outputs atomically. Heavy imports happen inside the steps: ``--help`` stays instant. The steps'
functions raise; only ``main`` turns an error into ``kdpipe <step>: error: <message>`` and exit
status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from kdpipe.config import ConfigError
from kdpipe.cost import PlanError
from kdpipe.data import DataError
from kdpipe.io import ResultError
from kdpipe.jobs import JobError


# The keys of each step's --spec: (required, optional), each with what it is. The help lists them
# and a spec lacking a required key is refused before the step starts.
TRAINING_KEYS = {
    "setup": "the setup's name", "dataset": "the dataset's name", "arch": "the architecture",
    "teacher_id": "<setup>/<teacher>", "recipe": "the training recipe (the config schema's)"}
USER_METHODS = "the config's own methods (its methods section), where it has any"
SPEC_KEYS = {
    "prepare-data": ({"family": "the dataset family", "options": "the family's options"}, {}),
    "train-teacher": (TRAINING_KEYS,
                      {"seed": "a trained teacher's seed",
                       "given": "a teacher given by file: {weights, init}, each {path, sha256}",
                       "data": "the dataset's family and options (part of the data "
                               "fingerprint)"}),
    "train-block": ({**TRAINING_KEYS, "arch": "the students' architecture",
                     "width": "the students' width multiplier",
                     "students": "the students: method, seed, run and their method's alpha, "
                                 "temperature and options"},
                    {"data": "as for train-teacher",
                     "teacher_arch": "the teacher's architecture where it differs",
                     "teacher_theta0": "false where the teacher has no initial weights",
                     "keep_weights": "true: save each trained student's weights",
                     "allow_chance_teacher": "true: train the students of a teacher at chance "
                                             "(default false: the job stops)",
                     "methods": USER_METHODS}),
    "collect": ({"ece_bins": "confidence bins of the calibration error"}, {}),
    "stats": ({"metrics": "the metrics tested, a list", "level": "significance level",
               "correction": "none, holm or bh",
               "bootstrap": "bootstrap draws of the scaling intervals",
               "scaling_widths": "all or fresh-init"}, {"methods": USER_METHODS}),
    "figures": ({}, {"formats": "file formats", "dpi": "raster resolution",
                     "width": "student width shown", "temperature": "KD temperature shown",
                     "training_curves": "true: draw figure 9, the training curves",
                     "style": "seaborn style", "context": "seaborn context",
                     "palette": "seaborn palette", "methods": USER_METHODS}),
    "audit": ({}, {"formats": "file formats", "dpi": "raster resolution",
                   "width": "student width shown", "style": "seaborn style",
                   "context": "seaborn context", "palette": "seaborn palette",
                   "methods": USER_METHODS}),
}


def spec_help(step: str) -> str:
    """The --spec help of ``step``: a JSON object and every key the step reads."""
    required, optional = SPEC_KEYS[step]
    keys = [f"{key} ({what})" for key, what in required.items()]
    keys += [f"{key} (optional: {what})" for key, what in optional.items()]
    return "JSON object (or @file) with the keys: " + "; ".join(keys)


def spec_arg(text: str) -> dict:
    """A JSON object, given inline or as @path."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--spec is not valid JSON: {error}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError("--spec must be a JSON object")
    return spec


# --- steps -------------------------------------------------------------------------------------

def prepare_data(args) -> int:
    import numpy as np

    from kdpipe import data
    from kdpipe.io import write_npy

    data.acquire(args.spec["family"], args.spec["options"], args.raw_dir)
    prepared = data.prepare(args.spec["family"], args.spec["options"], args.raw_dir, args.out)
    write_npy(args.labels_out, prepared.y_test.numpy().reshape(-1).astype(np.int64))
    print(f"{args.spec['family']}: {len(prepared.y_train)} train, {len(prepared.y_test)} test "
          f"samples, {prepared.num_classes} classes, inputs {list(prepared.input_shape)}",
          file=sys.stderr)
    return 0


def train_teacher(args) -> int:
    from kdpipe import jobs

    with jobs.exclusive(args.out / "teacher.lock", f"the teacher job of {args.out}"):
        jobs.train_teacher(args.spec, args.data, args.labels, args.out, args.results,
                           args.threads, args.device, args.checkpoint_dir, args.checkpoint_every)
    return 0


def train_block(args) -> int:
    from kdpipe import jobs

    with jobs.exclusive(args.manifest.with_suffix(".lock"), f"the block job {args.manifest}"):
        jobs.train_block(args.spec, args.data, args.labels, args.teacher, args.manifest,
                         args.results, args.threads, args.device, args.checkpoint_dir,
                         args.checkpoint_every, siddo_from=args.siddo_from)
    return 0


def collect(args) -> int:
    from kdpipe.store import manifest_files
    from kdpipe.tables import collect_rows, history_table, write_table

    def lines(path):
        return [line for line in Path(path).read_text().splitlines() if line.strip()]

    rows, manifests = lines(args.rows_file), {}
    for manifest in lines(args.manifests_file) if args.manifests_file else []:
        for row in manifest_files(manifest)["students"]:
            manifests[args.results / row] = manifest
    table = collect_rows(rows + list(manifests), args.results, manifests,
                         ece_bins=args.spec["ece_bins"])
    write_table(table, Path(args.out))
    print(f"collected {len(table)} models into {args.out}", file=sys.stderr)
    if args.history_out:
        history = history_table(table, args.results)
        write_table(history, args.history_out)
        print(f"collected {len(history)} epochs of training into {args.history_out}",
              file=sys.stderr)
    return 0


def statistics(args) -> int:
    import pandas as pd

    from kdpipe import stats
    from kdpipe.methods import Registry
    from kdpipe.tables import write_table

    out = Path(args.out)
    models = pd.read_parquet(out / "models.parquet")
    spec = args.spec
    registry = Registry(spec.get("methods"))
    tests = stats.compare_methods(models, metrics=tuple(spec["metrics"]), level=spec["level"],
                                  correction=spec["correction"],
                                  comparisons=registry.comparisons_of)
    for line in stats.untestable_summary(tests):
        print(line, file=sys.stderr)
    write_table(tests, out / "stats.parquet")
    write_table(stats.claims_table(tests, registry.claims), out / "claims.parquet")
    write_table(stats.asymmetry(models, methods=registry.distilled), out / "asymmetry.parquet")
    write_table(stats.scaling(models, bootstrap=spec["bootstrap"], widths=spec["scaling_widths"],
                              methods=registry.distilled), out / "scaling.parquet")
    return 0


def figures(args) -> int:
    from kdpipe import plots

    options = dict(args.spec)
    user_methods = options.pop("methods", None)
    written = plots.make_figures(Path(args.tables), Path(args.out), options,
                                 user_methods=user_methods)
    print(f"wrote {len(written)} figure files to {args.out}", file=sys.stderr)
    return 0


def audit(args) -> int:
    from kdpipe.audit import make_audit

    options = dict(args.spec)
    user_methods = options.pop("methods", None)
    written = make_audit(Path(args.tables), Path(args.results), Path(args.out), options,
                         user_methods=user_methods)
    print(f"wrote {len(written)} audit files", file=sys.stderr)
    return 0


def compare_groups(args) -> int:
    from kdpipe.compare import compare, write_comparison

    groups = dict(args.group)
    if len(groups) < len(args.group):
        names = [name for name, _ in args.group]
        raise ResultError(f"group {next(n for n in names if names.count(n) > 1)!r} is given "
                          "twice; give each group once")
    result = compare(args.teacher, args.labels, groups, args.reference,
                     seed_pattern=args.seed_pattern, level=args.level,
                     correction=args.correction, ece_bins=args.ece_bins)
    written = write_comparison(result, args.out, formats=args.formats, dpi=args.dpi)
    print(comparison_summary(result))
    print(f"wrote {len(written)} files to {args.out}", file=sys.stderr)
    return 0


def comparison_summary(result) -> str:
    """What ``kdpipe compare`` prints: the groups, then each comparison's tests and the
    asymmetric payoff, the numbers of the stats and asymmetry tables rounded for reading."""
    models, stats = result.models, result.stats
    teacher = models[models["role"] == "teacher"].iloc[0]
    lines = [f"teacher: {len(result.labels)} test samples, {result.teacher_logits.shape[1]} "
             f"classes, accuracy {teacher['accuracy']:.4f}, ece {teacher['ece']:.4f}"]
    for group in (*result.groups, result.reference):
        seeds = models.loc[models["method"] == group, "seed"].tolist()
        role = " (reference)" if group == result.reference else ""
        lines.append(f"{group}{role}: {len(seeds)} students, seeds {', '.join(map(str, seeds))}")
    p_column = "p_adjusted" if "p_adjusted" in stats else "p"
    shown = ["metric", "median_1", "median_2", "effect_size", p_column, "p_paired", "significant"]
    for comparison, rows in stats.groupby("comparison", sort=False):
        first, second = comparison.split("_vs_")
        lines += ["", f"{comparison}: two-sided Mann-Whitney, level {rows['level'].iloc[0]:g}; "
                      f"median_1 = {first}, median_2 = {second}; p_paired: Wilcoxon by seed"]
        table = rows[shown].astype({"significant": "object"}).fillna("n/a")
        lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    lines += ["", f"asymmetric payoff against {result.reference} (median agreement, method "
                  f"minus {result.reference}):"]
    for row in result.asymmetry.itertuples():
        ratio = f"{row.ratio:.3g}" if row.ratio == row.ratio else f"n/a ({row.ratio_note})"
        lines.append(f"  {row.method}: delta_correct {row.delta_correct:+.4f}, delta_incorrect "
                     f"{row.delta_incorrect:+.4f}, ratio {ratio}")
    return "\n".join(lines)


def plan(args) -> int:
    from kdpipe import config, cost

    study = config.load(args.configfile)
    calibration = None
    if args.device_profile:
        calibration = cost.load_calibration(args.device_profile)
    elif args.calibrate_here:
        import torch

        torch.set_num_threads(study["threads"])  # as the study's training jobs run
        print("measuring this CPU's training rates (a few seconds each):", file=sys.stderr)
        calibration = cost.calibrate(cost.rate_needs(study), "cpu", seconds=1.0,
                                     max_step_flops=cost.CPU_STEP_FLOPS,
                                     log=lambda line: print(f"  {line}", file=sys.stderr))
    print(cost.report(cost.estimate(study, calibration), source=str(args.configfile)))
    return 0


def group_arg(text: str) -> tuple[str, str]:
    """NAME=PATTERN: a group's name and the glob pattern of its logits files."""
    name, equals, pattern = text.partition("=")
    if not equals or not name or not pattern:
        raise argparse.ArgumentTypeError(f"expected NAME=PATTERN (e.g. kd='runs/kd/*.npy'), "
                                         f"got {text!r}")
    return name, pattern


# --- parser ------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    # installed, the package is also the command `kdpipe` (pyproject.toml's [project.scripts])
    prog = "kdpipe" if Path(sys.argv[0]).name == "kdpipe" else "python -m kdpipe"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name, func, help):
        s = steps.add_parser(name, help=help, description=help)
        s.set_defaults(func=func)
        return s

    def step_spec(s, name):
        s.add_argument("--spec", type=spec_arg, required=True, help=spec_help(name))

    def training(s, name):
        step_spec(s, name)
        s.add_argument("--data", type=Path, required=True, help="prepared dataset (.pt)")
        s.add_argument("--labels", type=Path, required=True, help="test labels (.npy)")
        s.add_argument("--results", type=Path, default=Path("results"),
                       help="results folder the table's paths are relative to (default: results)")
        s.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
        s.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
        s.add_argument("--checkpoint-dir", type=Path,
                       help="folder of training checkpoints, one file per run: saved "
                            "periodically, resumed from when present")
        s.add_argument("--checkpoint-every", type=int, default=5,
                       help="epochs between checkpoints (default: 5; 0: none)")

    s = step("prepare-data", prepare_data, "Prepare a dataset once into a tensor file.")
    step_spec(s, "prepare-data")
    s.add_argument("--raw-dir", type=Path, required=True, help="folder of the official files")
    s.add_argument("--out", type=Path, required=True, help="prepared tensor file (.pt)")
    s.add_argument("--labels-out", type=Path, required=True, help="test labels (.npy, int64)")

    s = step("train-teacher", train_teacher,
             "Train a teacher with cross-entropy, or load one given by file; keep theta0, "
             "weights, train and test logits.")
    training(s, "train-teacher")
    s.add_argument("--out", type=Path, required=True, help="teacher folder")

    s = step("train-block", train_block,
             "Train a block of students of one (setup, teacher, width) together; skip those "
             "already finished.")
    training(s, "train-block")
    s.add_argument("--teacher", type=Path, required=True, help="the teacher's folder")
    s.add_argument("--manifest", type=Path, required=True,
                   help="the block's manifest (.json) listing its students' rows, written last")
    s.add_argument("--siddo-from", type=Path,
                   help="another teacher's folder (same setup and seed) whose finished siddo "
                        "students this teacher's rows reference instead of training them again")

    s = step("collect", collect, "Merge per-model rows into models.parquet (+ .csv).")
    step_spec(s, "collect")
    s.add_argument("--rows-file", type=Path, required=True, help="text file, one row.json per line")
    s.add_argument("--manifests-file", type=Path,
                   help="text file, one block manifest per line: adds its students' rows")
    s.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    s.add_argument("--out", type=Path, required=True, help="models table (.parquet)")
    s.add_argument("--history-out", type=Path,
                   help="history table (.parquet): the models' training histories, per epoch")

    s = step("stats", statistics, "Mann-Whitney tests, asymmetry and scaling tables.")
    step_spec(s, "stats")
    s.add_argument("--out", type=Path, required=True, help="tables folder holding models.parquet")

    s = step("figures", figures, "Draw every figure from the tables alone.")
    step_spec(s, "figures")
    s.add_argument("--tables", type=Path, required=True, help="tables folder")
    s.add_argument("--out", type=Path, required=True, help="figures folder")

    s = step("compare", compare_groups,
             "Compare groups of students of one teacher from their test logits: the models, "
             "Mann-Whitney (and paired Wilcoxon) tests, asymmetry and teacher-error audit "
             "tables, figures 1 and 2 and the audit figure (docs/compare.md).")
    s.add_argument("--teacher", type=Path, required=True,
                   help="the teacher's test logits: .npy float [N, C], or .pt holding one tensor")
    s.add_argument("--labels", type=Path, required=True, help="the test labels: .npy int [N]")
    s.add_argument("--group", type=group_arg, action="append", required=True,
                   metavar="NAME=PATTERN",
                   help="a group of students: its name and a glob pattern of their logits "
                        "files, one per seed (quote the pattern); give it once per group")
    s.add_argument("--reference", required=True,
                   help="the group every other group is compared with (siddo's role); the "
                        "others are also compared pairwise, in the order given")
    s.add_argument("--seed-pattern",
                   help="a regular expression with one group that captures each file's seed "
                        r"from its path, e.g. '_s(\d+)/' or 'seed(\d+)'; default: files are "
                        "numbered 0, 1, ... in sorted order within each group")
    s.add_argument("--level", type=float, default=0.05, help="significance level (default 0.05)")
    s.add_argument("--correction", choices=["none", "holm", "bh"], default="none",
                   help="multiple-testing correction over the table (default none)")
    s.add_argument("--ece-bins", type=int,
                   help="confidence bins of the expected calibration error (default 15)")
    s.add_argument("--formats", nargs="+", choices=["png", "pdf", "svg"], default=["png", "pdf"],
                   help="figure formats (default: png pdf)")
    s.add_argument("--dpi", type=int, default=150, help="raster resolution (default 150)")
    s.add_argument("--out", type=Path, required=True, help="output folder")

    s = step("plan", plan,
             "What a study costs before it runs: jobs per rule, training FLOPs and "
             "device-hours, disk, and whether its tests can reach significance "
             "(docs/planning.md).")
    s.add_argument("--configfile", type=Path, required=True, help="the study's config (YAML)")
    rates = s.add_mutually_exclusive_group()
    rates.add_argument("--device-profile", type=Path, metavar="FILE",
                       help="a calibration file (benchmarks/bench_device.py --calibrate FILE): "
                            "device-hours at its measured training rates")
    rates.add_argument("--calibrate-here", action="store_true",
                       help="measure this CPU's training rates first (a few seconds per "
                            "architecture and width)")

    s = step("audit", audit, "Tables and figures of each teacher's errors and the students' copies.")
    step_spec(s, "audit")
    s.add_argument("--tables", type=Path, required=True, help="tables folder (models.parquet)")
    s.add_argument("--results", type=Path, default=Path("results"),
                   help="results folder the table's paths are relative to (default: results)")
    s.add_argument("--out", type=Path, required=True, help="figures folder")

    return p


def append_to_log() -> None:
    """Make stderr append where it is a file (a job's log): a second copy of a job, started while
    a first still runs, truncates the log as its shell opens it, and the first would then write
    at its old offset, leaving NUL bytes before its lines."""
    import fcntl
    import stat

    if stat.S_ISREG(os.fstat(2).st_mode):
        fcntl.fcntl(2, fcntl.F_SETFL, fcntl.fcntl(2, fcntl.F_GETFL) | os.O_APPEND)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    append_to_log()
    slurm_job = os.environ.get("SLURM_JOB_ID")
    print(f"{args.step} on {socket.gethostname()}, pid {os.getpid()}"
          + (f", SLURM job {slurm_job}" if slurm_job else ""), file=sys.stderr)
    lacking = [key for key in SPEC_KEYS.get(args.step, ({}, {}))[0] if key not in args.spec]
    if lacking:
        print(f"kdpipe {args.step}: error: --spec lacks {', '.join(map(repr, lacking))} (see "
              f"--help)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        code = args.func(args)
    # a missing or damaged input, a full disk, an absent device, diverged training, a bad config
    # or calibration file: say what
    except (DataError, ResultError, JobError, ConfigError, PlanError) as error:
        print(f"kdpipe {args.step}: error: {error}", file=sys.stderr)
        return 1
    print(f"{args.step} done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code
