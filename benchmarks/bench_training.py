"""Training speed on this machine, each figure a ratio against a reference measured in the same run.

    python benchmarks/bench_training.py            # all three measurements (~10 min on 2 cores)
    python benchmarks/bench_training.py --no-study # skip the default-study run

1. Student throughput on the digits MLP: one kdpipe `train-block` job training every student
   (data as tensors, cached teacher logits, learners fused) against the reference loop of the
   usual tutorial kind (benchmarks/reference_kd.py: DataLoader, teacher forward every step, one
   student per process), both run as the commands a workflow would run.
2. The kd+rcd pair against one student: in one process (the training loop alone), and as whole
   block jobs (loading data and teacher logits, evaluating, writing).
3. The default study (config/config.yaml, `snakemake --cores 2`): wall time against the sum of
   its models' training times.
"""
import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENV = {**os.environ, "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}"}


def kdpipe(*args, env=ENV):
    subprocess.run([PYTHON, "-m", "kdpipe", *map(str, args)], check=True, env=env,
                   stderr=subprocess.DEVNULL)


def spec(**extra):
    return json.dumps({"setup": "bench", "dataset": "digits", "arch": "mlp",
                       "teacher_id": "bench/teacher", **extra})


def prepare(work: Path, epochs: int):
    data, labels = work / "data/digits.pt", work / "data/digits.labels.npy"
    kdpipe("prepare-data", "--spec", json.dumps({"family": "digits", "options": {}}),
           "--raw-dir", work, "--out", data, "--labels-out", labels)
    kdpipe("train-teacher", "--spec", spec(seed=0, recipe={"epochs": epochs, "batch_size": 32}),
           "--data", data, "--labels", labels, "--out", work / "teacher", "--results", work,
           "--device", "cpu")
    return data, labels


def block_job(work, data, labels, seeds, recipe, methods):
    """One train-block job training ``methods`` for each seed (a fresh store each time)."""
    students = [{"method": m, "seed": seed, "run": f"bench{len(seeds)}_s{seed}", "alpha": 0.5,
                 "temperature": 1.0} for seed in seeds for m in methods]
    for m in methods:
        shutil.rmtree(work / "teacher" / m, ignore_errors=True)
    kdpipe("train-block", "--spec", spec(width=1.0, recipe=recipe, students=students),
           "--data", data, "--labels", labels, "--teacher", work / "teacher",
           "--manifest", work / "teacher/blocks/bench.json", "--results", work, "--device", "cpu")


def throughput(work: Path, students: int, epochs: int) -> None:
    data, labels = prepare(work, epochs)
    recipe = {"epochs": epochs, "batch_size": 32}
    samples = students * epochs * 539  # 539 training images

    start = time.perf_counter()
    for seed in range(students):
        subprocess.run([PYTHON, str(REPO / "benchmarks/reference_kd.py"), work / "teacher/init.pt",
                        str(epochs), "0.5", str(seed)], check=True, env=ENV)
    reference = time.perf_counter() - start
    ours = timed(block_job, work, data, labels, range(students // 2), recipe, ("kd", "rcd"))
    one_job = statistics.median(timed(block_job, work, data, labels, [0], recipe, ("kd",))
                                for _ in range(3))
    pair_job = statistics.median(timed(block_job, work, data, labels, [0], recipe, ("kd", "rcd"))
                                 for _ in range(3))
    print(f"1. student throughput, digits MLP, {students} students x {epochs} epochs")
    for name, seconds in (("reference (DataLoader, teacher forward, 1 student/process)", reference),
                          ("kdpipe, one block job of kd+rcd pairs", ours)):
        print(f"   {name:60s} {seconds:6.1f} s  {samples / seconds:9.0f} samples/s"
              f"  {reference / seconds:5.1f}x")
    print("2a. kd+rcd pair job against a kd-only job (median of 3)")
    print(f"   mlp: one student {one_job:5.2f} s, pair {pair_job:5.2f} s, "
          f"ratio {pair_job / one_job:4.2f}x")


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def pair_cost(epochs: int, repeats: int = 5) -> None:
    import torch

    from kdpipe import data as kdata, models
    from kdpipe.train import Learner, RandomLogits, Recipe, TeacherLogits, generator, train

    torch.set_num_threads(1)
    prepared = kdata.family("digits").prepare({}, Path("."))
    x, y = prepared["x_train"], prepared["y_train"]
    teacher = torch.randn(len(x), 10, generator=generator(0))
    recipe = Recipe(epochs=epochs, batch_size=32)
    print(f"2b. kd+rcd pair against one kd student, training loop alone ({epochs} epochs, median "
          f"of {repeats})")
    for arch in ("mlp", "cnn"):
        base = models.build(arch, (1, 8, 8), 10, 1.0)
        models.init_parameters(base, generator(1))

        def run(k):
            learners = [Learner("kd", copy.deepcopy(base), TeacherLogits(teacher), 0.5, order_seed=3),
                        Learner("rcd", copy.deepcopy(base), RandomLogits(len(x), 10, 2), 0.5,
                                order_seed=3)]
            return train(learners[:k], x, y, recipe)

        run(2)  # warm-up
        one = statistics.median(run(1) for _ in range(repeats))
        two = statistics.median(run(2) for _ in range(repeats))
        print(f"   {arch}: one student {one:5.2f} s, pair {two:5.2f} s, ratio {two / one:4.2f}x")


def default_study(cores: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        start = time.perf_counter()
        subprocess.run([PYTHON, "-m", "snakemake", "-s", REPO / "Snakefile", "--directory", work,
                        "--configfile", REPO / "config/config.yaml", "--cores", str(cores), "-q"],
                       check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        timings = list((work / "results").glob("**/timing.json"))
        training = sum(json.loads(p.read_text())["train_seconds"] for p in timings)
    print(f"3. default study (config/config.yaml, {len(timings)} models, --cores {cores})")
    print(f"   wall time {wall:6.1f} s ({wall / 60:.1f} min); sum of model training times "
          f"{training:6.1f} s")
    print(f"   share of the {cores} cores' time spent training: {training / (wall * cores):.0%}"
          f"  (outside training: {1 - training / (wall * cores):.0%})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=8, help="students in measurement 1")
    p.add_argument("--epochs", type=int, default=30, help="epochs per student")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores for the default study")
    p.add_argument("--no-study", action="store_true", help="skip measurement 3")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        throughput(Path(work), args.students, args.epochs)
    pair_cost(args.epochs)
    if not args.no_study:
        default_study(args.cores)


if __name__ == "__main__":
    main()
