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
4. The training engine in one process (`--engine` runs 4 and 5 only): 8 digits-MLP students in
   one `train` call against one after another; kd+rcd+siddo against one student; per
   architecture and width, 4 students stacked against one after another; for the digits
   models, K = 2, 3, 4, 8 students stacked against one after another (where stacking pays).
5. The default study's FLOPs (torch.utils.flop_counter) against this machine's matmul rate.
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

from kdpipe import config

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENV = {**os.environ, "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}"}


def kdpipe(*args, env=ENV):
    subprocess.run([PYTHON, "-m", "kdpipe", *map(str, args)], check=True, env=env,
                   stderr=subprocess.DEVNULL)


def spec(recipe: dict, **extra):
    """A training job's spec; ``recipe`` gets the schema's defaults, as a config's does."""
    return json.dumps({"setup": "bench", "dataset": "digits", "arch": "mlp",
                       "teacher_id": "bench/teacher", "recipe": config.recipe(**recipe), **extra})


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
    recipe = Recipe(**config.recipe(epochs=epochs, batch_size=32))
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


# --- 4. the fused engine ------------------------------------------------------------------------

# architecture: (input shape, widths, samples, batch size) of the per-architecture comparison;
# mlp and cnn run on digits, the others on synthetic data of their inputs' kind
ENGINE_CASES = {
    "mlp": ((1, 8, 8), (0.5, 1, 2), None, 32),
    "cnn": ((1, 8, 8), (0.5, 1, 2), None, 32),
    "resnet18": ((3, 16, 16), (0.25, 0.5), 128, 32),
    "vgg19": ((3, 32, 32), (0.25, 0.5), 128, 32),
    "vit": ((3, 16, 16), (0.25, 0.5), 128, 32),
    "m5": ((1, 4000), (0.25, 0.5), 128, 32),
    "logmel_cnn": ((1, 32, 32), (0.25, 0.5), 128, 32),
    "char_lstm": ((32,), (0.25, 0.5), 128, 32),
    "char_gpt": ((32,), (0.25, 0.5), 128, 32),
}


def engine_data(arch: str):
    import torch

    from kdpipe.train import generator

    shape, _, n, _ = ENGINE_CASES[arch]
    if n is None:
        x, y = digits()
        return x, y, 10
    g = generator(0)
    if arch.startswith("char"):
        return (torch.randint(0, 65, (n, *shape), generator=g),
                torch.randint(0, 65, (n, *shape), generator=g), 65)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g), 10


def digits():
    from kdpipe import data as kdata

    prepared = kdata.family("digits").prepare({}, Path("."))
    return prepared["x_train"], prepared["y_train"]


def kd_students(arch, shape, width, classes, x, y, seeds, methods=("kd",)):
    """For every seed, students of ``methods`` from that seed's init and data order."""
    import torch

    from kdpipe import models
    from kdpipe.train import Learner, RandomLogits, TeacherLogits, generator

    teacher = torch.randn(*y.shape, classes, generator=generator(99))
    learners = []
    for seed in seeds:
        base = models.build(arch, shape, classes, width)
        models.init_parameters(base, generator(seed))
        for method in methods:
            target = {"kd": TeacherLogits(teacher), "siddo": None,
                      "rcd": RandomLogits(len(x), (*y.shape[1:], classes), seed)}[method]
            learners.append(Learner(method, copy.deepcopy(base), target,
                                    0.0 if target is None else 0.5, order_seed=seed))
    return learners


def fused_and_sequential(learners_of, x, y, recipe, repeats: int, fuse="auto"):
    """Median seconds: all learners in one ``train`` call (fused as ``fuse`` says), and the same
    learners one ``train`` call after another."""
    from kdpipe.train import train

    def fused():
        return train(learners_of(), x, y, recipe, fuse=fuse)

    def sequential():
        return sum(train([learner], x, y, recipe) for learner in learners_of())

    fused()  # warm-up
    return (statistics.median(fused() for _ in range(repeats)),
            statistics.median(sequential() for _ in range(repeats)))


def engine(epochs: int, repeats: int) -> None:
    import torch

    from kdpipe.train import Recipe, build_engines

    torch.set_num_threads(1)
    x, y = digits()
    recipe = Recipe(**config.recipe(epochs=epochs, batch_size=32))
    print(f"4a. 8 digits-MLP kd students (width 1, seeds 0-7), {epochs} epochs, one thread, "
          f"median of {repeats}")
    fused, sequential = fused_and_sequential(
        lambda: kd_students("mlp", (1, 8, 8), 1.0, 10, x, y, range(8)), x, y, recipe, repeats)
    print(f"   one after another {sequential:6.2f} s, fused {fused:6.2f} s, "
          f"speed-up {sequential / fused:4.1f}x")

    one = statistics.median(
        fused_and_sequential(lambda: kd_students("mlp", (1, 8, 8), 1.0, 10, x, y, [0]), x, y,
                             recipe, repeats)[0] for _ in range(1))
    triple, _ = fused_and_sequential(
        lambda: kd_students("mlp", (1, 8, 8), 1.0, 10, x, y, [0], ("kd", "rcd", "siddo")),
        x, y, recipe, repeats)
    print(f"4b. kd+rcd+siddo of one seed fused against one kd student (digits MLP): "
          f"{triple:5.2f} s / {one:5.2f} s = {triple / one:4.2f}x")

    print(f"4c. 4 students stacked (fuse=always) against one after another, per architecture "
          f"and width (1 epoch of {ENGINE_CASES['resnet18'][2]} synthetic samples unless digits; "
          f"median of {repeats}); 'engine' is what fuse=auto, the default, does here")
    for arch, (shape, widths, _, batch) in ENGINE_CASES.items():
        ax, ay, classes = engine_data(arch)
        arch_epochs = 1 if arch not in ("mlp", "cnn") else epochs
        arch_recipe = Recipe(**config.recipe(epochs=arch_epochs, batch_size=batch))
        for width in widths:
            def learners_of():
                return kd_students(arch, shape, width, classes, ax, ay, range(4))
            kinds = {type(e).__name__ for e in build_engines(learners_of(), range(4),
                                                            arch_recipe, {})}
            fused, sequential = fused_and_sequential(learners_of, ax, ay, arch_recipe, repeats,
                                                     "always")
            params = sum(p.numel() for p in learners_of()[0].parameters())
            print(f"   {arch:10s} width {width:<4g} {params / 1e3:7.0f}k parameters, engine "
                  f"{'+'.join(sorted(kinds)):6s} "
                  f"sequential {sequential:6.2f} s  fused {fused:6.2f} s  "
                  f"speed-up {sequential / fused:4.2f}x", flush=True)


def group_sizes(epochs: int, repeats: int) -> None:
    """Where stacking starts to pay on this CPU: K digits students stacked (fuse=always) against
    one after another, for K seeds (K batches a step) and for the kd+rcd pair of one seed (one
    batch), with the two runs alternating so that a noisy machine slows both alike."""
    import torch

    from kdpipe.train import Recipe, train

    torch.set_num_threads(1)
    x, y = digits()
    recipe = Recipe(**config.recipe(epochs=epochs, batch_size=32))
    print(f"4d. K digits students stacked (fuse=always) against one after another ({epochs} "
          f"epochs, one thread, median of {repeats}, alternating)")
    cases = [(k, f"{k} seeds", lambda a, w, k=k: kd_students(a, (1, 8, 8), w, 10, x, y, range(k)))
             for k in (2, 3, 4, 8)]
    cases.insert(1, (2, "kd+rcd, 1 seed", lambda a, w: kd_students(a, (1, 8, 8), w, 10, x, y, [0],
                                                                  ("kd", "rcd"))))
    for arch, widths in (("mlp", (0.5, 1, 2)), ("cnn", (0.5, 1))):
        for width in widths:
            row = []
            for k, label, learners_of in cases:
                times = {"alone": [], "stacked": []}
                train(learners_of(arch, width), x, y, recipe, fuse="always")  # warm-up
                for _ in range(repeats):
                    times["alone"].append(sum(train([learner], x, y, recipe)
                                              for learner in learners_of(arch, width)))
                    times["stacked"].append(train(learners_of(arch, width), x, y, recipe,
                                                  fuse="always"))
                speed_up = statistics.median(times["alone"]) / statistics.median(times["stacked"])
                row.append(f"{label}: {speed_up:4.2f}x")
            print(f"   {arch} width {width:<3g}  " + "  ".join(row), flush=True)


def arithmetic_floor(epochs: int) -> None:
    """The default study's training FLOPs (torch.utils.flop_counter, forward and backward of
    every student and teacher), this machine's rate on a large matmul, and the time the engine
    takes for one (width, seed) group of seven students, scaled to the study, against that
    floor."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kdpipe.train import Recipe, train

    torch.set_num_threads(1)
    x, y = digits()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    rate = 5 * 2 * 2048 ** 3 / (time.perf_counter() - start)
    study_epochs, seeds, methods = 30, 8, 7  # config/config.yaml: kd, rcd x 3 alphas, siddo
    print(f"5. arithmetic floor: one thread does {rate / 1e9:.1f} GFLOP/s on a 2048^2 matmul")
    total_flops = total_seconds = 0.0
    for arch, lr in (("mlp", 1e-3), ("cnn", 2e-3)):
        for width in (0.5, 1, 2):
            recipe = Recipe(**config.recipe(epochs=1, batch_size=32, lr=lr))
            with FlopCounterMode(display=False) as counter:
                train(kd_students(arch, (1, 8, 8), width, 10, x, y, [0]), x, y, recipe)
            per_student = counter.get_total_flops() * study_epochs
            flops = per_student * seeds * methods + (per_student if width == 1 else 0)
            group = kd_students(arch, (1, 8, 8), width, 10, x, y, [0],
                                ("kd", "kd", "kd", "rcd", "rcd", "rcd", "siddo"))
            recipe = Recipe(**config.recipe(epochs=epochs, batch_size=32, lr=lr))
            seconds = train(group, x, y, recipe)
            seconds *= study_epochs / epochs * seeds
            total_flops += flops
            total_seconds += seconds
            print(f"   digits-{arch} width {width:<3g}: {flops / 1e12:6.3f} TFLOP, floor "
                  f"{flops / rate:6.1f} s, training {seconds:6.1f} s "
                  f"({seconds / (flops / rate):5.1f}x the floor)", flush=True)
    print(f"   study: {total_flops / 1e12:.2f} TFLOP, floor {total_flops / rate:.0f} s on one "
          f"thread, training {total_seconds:.0f} s ({total_seconds * rate / total_flops:.1f}x)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=8, help="students in measurement 1")
    p.add_argument("--epochs", type=int, default=30, help="epochs per student")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores for the default study")
    p.add_argument("--no-study", action="store_true", help="skip measurement 3")
    p.add_argument("--engine", action="store_true",
                   help="only measurements 4-5 (the training engine, in one process)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of measurement 4 (median)")
    args = p.parse_args()
    if args.engine:
        engine(args.epochs, args.repeats)
        group_sizes(args.epochs, args.repeats)
        arithmetic_floor(args.epochs)
        return
    with tempfile.TemporaryDirectory() as work:
        throughput(Path(work), args.students, args.epochs)
    pair_cost(args.epochs)
    if not args.no_study:
        default_study(args.cores)


if __name__ == "__main__":
    main()
