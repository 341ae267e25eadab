"""Students per hour of ResNet-18 on CIFAR-shaped synthetic data, on whatever device is present:
K = 1, 2 and 8 students trained fused (one ``train`` call), in fp32, tf32 and bf16 autocast
(``kdpipe.train.precision_context``).

    python benchmarks/bench_device.py           # the device's own size: 32x32, width 1, batch 128
    python benchmarks/bench_device.py --quick   # tiny (16x16, width 0.125): runnable on a CPU
    python benchmarks/bench_device.py --width 0.25 --ks 1,3,8 --precisions fp32,tf32

Each student has its own init and data order, as in the study. A figure is the median of
``--repeats`` timed epochs after one warm-up epoch (which also builds cuDNN plans); students per
hour assume ``--epochs-per-student`` epochs of ``--samples`` images each. The speed-up is against
K = 1 at the same precision, measured in the same run.

    python benchmarks/bench_device.py --calibrate h200.json --configfile config/paper.yaml

writes the calibration file of ``kdpipe plan --device-profile h200.json`` instead: the achieved
training FLOP/s (kdpipe.cost.measure_rate: FlopCounterMode's count over the time of an epoch of
random inputs) of every (architecture, width, precision) the study trains, at its recipes' batch
sizes and its data sets' input shapes, on the device a job of the study would use, with the
device's name, the torch and CUDA versions, the date and this command (docs/planning.md).

    python benchmarks/bench_device.py --utilisation --archs resnet18 --widths 0.125,1 --json u.json

measures how much of the device a training step uses instead, one row per (architecture, width,
K, precision): K kd students (random teacher logits, each its own init and data order) trained
by ``train`` with the setup's recipe (optimizer, schedule, augmentation) at its batch size and
its data set's input shape, from config/paper.yaml (and the digits CNN from config/config.yaml;
shapes are the data families' declared facts). Each row prints

- the training FLOPs of one step, the K learners' forward and backward
  (kdpipe.cost.arithmetic: torch.utils.flop_counter's count), and the step's time: the median
  over ``--repeats`` timed epochs of ``--steps`` steps, after one warm-up epoch, divided by the
  steps; their quotient is the achieved FLOP/s;
- that against the device's peak measured in the same run, a large square matmul in the row's
  precision (fp32 IEEE, tf32, bf16; on a CPU tf32 is fp32);
- a torch.profiler profile of one more epoch: the share of its wall time inside device kernels
  (on a GPU the union of its kernels' intervals; on a CPU the aten ops' self time), on a GPU
  the share inside kernel-launch calls, the kernels (GPU) or aten calls (CPU) a step, the step's
  time under the profiler (whose own cost is in the rest), and the 3 aten ops that take most
  (their kernels on a GPU, their self time on a CPU), as shares of the profiled wall time.

Rows are printed as they are measured; a summary names the best and worst row by share of peak
and where the rest of the worst one's step goes. ``--json FILE`` writes every row, with the
device's name, torch and CUDA versions, the date and the command, rewritten atomically after
each row so that a run cut short keeps what it measured (``"complete": false`` until the end).
A row that fails (out of memory, say) is printed and recorded with its error; the run goes on
and exits with status 1 at the end. ``--quick`` runs batches of at most 16, 2 steps an epoch and
a 256 x 256 matmul, at width 0.125: runnable on a CPU.
"""
import argparse
import datetime
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# where --utilisation takes each architecture's recipe and input shape: the paper's study, then
# the default one (the digits CNN is only there)
STUDIES = (REPO / "config/paper.yaml", REPO / "config/config.yaml")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU")
    p.add_argument("--samples", type=int, help="training images per epoch (default 4096; quick 256)")
    p.add_argument("--batch-size", type=int,
                   help="batch size (default 128; with --utilisation each setup's recipe's, quick "
                        "at most 16)")
    p.add_argument("--widths", "--width", dest="widths",
                   help="width multipliers, comma-separated (default 1, quick 0.125; with "
                        "--utilisation 0.25,1)")
    p.add_argument("--epochs-per-student", type=int, default=200,
                   help="epochs one student trains (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per figure (median)")
    p.add_argument("--ks", help="students fused (default 1,2,8; with --utilisation 1,8, quick 1,2)")
    p.add_argument("--precisions", default="fp32,tf32,bf16",
                   help="recipe precisions (default fp32,tf32,bf16)")
    p.add_argument("--fuse", default="always", choices=("always", "auto", "never"),
                   help="train(fuse=...): always (default) stacks the K students; auto is the "
                        "engine's own choice (kdpipe.train.AUTO_FUSE: at width 1 these train "
                        "alone, on a CPU and on CUDA)")
    p.add_argument("--calibrate", type=Path, metavar="FILE",
                   help="write a calibration file for kdpipe plan --device-profile instead")
    p.add_argument("--configfile", type=Path, default=REPO / "config/paper.yaml",
                   help="with --calibrate: the study whose rates to measure (default: "
                        "config/paper.yaml)")
    p.add_argument("--learners", type=int, default=1,
                   help="with --calibrate: models trained together per measurement (default 1; "
                        "a block's students per seed, e.g. 7, to measure fused training)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="with --calibrate: about how long each timed epoch runs (default 2)")
    p.add_argument("--utilisation", action="store_true",
                   help="measure achieved FLOP/s against the device's peak and profile the steps "
                        "instead")
    p.add_argument("--archs",
                   help="with --utilisation: architectures, comma-separated (default: every one "
                        "of config/paper.yaml and the digits CNN)")
    p.add_argument("--steps", type=int,
                   help="with --utilisation: steps per epoch (default 20; quick 2)")
    p.add_argument("--matmul-size", type=int,
                   help="with --utilisation: side of the square matmul of the peak (default 8192 "
                        "on CUDA, 2048 on a CPU; quick 256)")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="with --utilisation: write every row to FILE (JSON)")
    args = p.parse_args()
    if args.calibrate:
        calibrate(args)
    elif args.utilisation:
        if not utilisation(args):
            sys.exit(1)
    else:
        students_table(args)


def listed(text: str, kind, option: str) -> list:
    """The comma-separated values of a command-line option, each converted by ``kind``."""
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        sys.exit(f"{option} {text!r}: expected comma-separated {kind.__name__} values")


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} thread(s)"


def students_table(args) -> None:
    """The K-students table: students per hour of ResNet-18 stacked K at a time."""
    import torch

    from kdpipe import config, models
    from kdpipe.jobs import setup_torch
    from kdpipe.train import Learner, Recipe, TeacherLogits, generator, train

    device = setup_torch(1, "auto")  # as a training job: on CUDA, deterministic algorithms
    side = 16 if args.quick else 32
    n = args.samples or (256 if args.quick else 4096)
    batch = min(args.batch_size or 128, n)
    g = generator(0, device)
    x = torch.randn(n, 3, side, side, generator=g, device=device)
    y = torch.randint(0, 10, (n,), generator=g, device=device)
    teacher = torch.randn(n, 10, generator=g, device=device)
    name = device_name(torch.device(device))
    for width in listed(args.widths or ("0.125" if args.quick else "1"), float, "--widths"):
        print(f"ResNet-18 width {width:g}, {n} images {side}x{side}, batch {batch}, on {name}, "
              f"fuse={args.fuse}")
        print(f"{'K':>3} {'precision':9} {'s/epoch':>8} {'images/s':>10} {'students/h':>11} "
              f"{'speed-up':>8}")
        for precision in args.precisions.split(","):
            single = None
            for k in listed(args.ks or "1,2,8", int, "--ks"):
                learners = []
                for seed in range(k):
                    model = models.build("resnet18", (3, side, side), 10, width).to(device)
                    models.init_parameters(model, generator(seed, device))
                    learners.append(Learner("kd", model, TeacherLogits(teacher), 0.5,
                                            order_seed=seed))
                recipe = Recipe(**config.recipe(epochs=1, batch_size=batch, precision=precision))
                train(learners, x, y, recipe, fuse=args.fuse)  # warm-up
                seconds = statistics.median(train(learners, x, y, recipe, fuse=args.fuse)
                                            for _ in range(args.repeats))
                per_student = seconds / k
                single = single or per_student
                print(f"{k:3d} {precision:9} {seconds:8.2f} {k * n / seconds:10.0f} "
                      f"{3600 / (per_student * args.epochs_per_student):11.1f} "
                      f"{single / per_student:7.2f}x", flush=True)


def calibrate(args) -> None:
    """Measure the study's training rates on the device its jobs would use and write them."""
    from kdpipe import config, cost
    from kdpipe.io import write_json
    from kdpipe.jobs import setup_torch

    study = config.load(args.configfile)
    device = setup_torch(study["threads"], study["device"])  # as the study's jobs run
    calibration = cost.calibrate(cost.rate_needs(study), device, args.learners, args.seconds,
                                 command=" ".join(["python", *sys.argv]), log=print)
    write_json(args.calibrate, calibration.to_json())
    print(f"wrote {args.calibrate}: {len(calibration.rates)} rates on {calibration.device}")


# --- utilisation --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """What a student of one architecture trains on in a study: its setup's recipe (a filled
    config's) and its data set's input shape, dtype and classes."""
    arch: str
    setup: str
    input_shape: tuple
    dtype: str
    classes: int
    recipe: dict


def workloads(paths) -> dict:
    """Per architecture, its ``Workload`` in the first study of ``paths`` and the first setup
    that trains it (as teacher or student) with a data set of known facts."""
    from kdpipe import config, cost
    from kdpipe.plan import Study

    found = {}
    for path in paths:
        study = Study(config.load(path))
        for setup in study.setups:
            entry = study.config["setups"][setup]
            archs = [a for a in dict.fromkeys([entry["arch"], study.student_arch(setup)])
                     if a not in found]
            facts = cost.dataset_plan(study, study.dataset_of(setup)).facts if archs else None
            for arch in archs if facts is not None else ():
                found[arch] = Workload(arch, setup, tuple(facts.input_shape), facts.dtype,
                                       facts.classes, entry["recipe"])
    return found


def matmul_peak(precision: str, device, size: int, seconds: float) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul in ``precision`` (float32 inputs under
    ``precision_context``, bf16 inputs for bf16): 2 size^3 over the best of 3 runs of as many
    matmuls as take about ``seconds`` / 3, after one untimed (cuBLAS's handle and kernel
    choice)."""
    import torch

    from kdpipe.train import generator, precision_context

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = generator(0, device)
    a, b = (torch.randn(size, size, generator=g, device=device).to(dtype) for _ in range(2))
    out = torch.empty_like(a)

    def run(reps):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / reps

    with precision_context(precision, device):
        run(1)
        reps = max(1, math.ceil(seconds / 3 / run(1)))
        best = min(run(reps) for _ in range(3))
    return 2 * size ** 3 / best


def busy_seconds(intervals) -> float:
    """Seconds covered by the union of (start, end) intervals in microseconds: kernels that
    overlap (on several streams) count once."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 1e6


# torch.profiler's activity types of a device's work (None: a torch that does not say)
DEVICE_WORK = (None, "kernel", "gpu_memcpy", "gpu_memset")


def profile_summary(events, seconds: float, steps: int, on_gpu: bool) -> dict:
    """Where ``steps`` steps' ``seconds`` of wall time went, from torch.profiler's events of
    them: ``kernel_share``, on a GPU the union of the device's kernels and copies over the wall
    time, on a CPU the aten ops' self time; ``launch_share`` (GPU only, else None), the host
    time inside kernel-launch calls; ``ops_per_step``, device kernels (GPU) or aten calls
    (CPU); ``top_ops``, the 3 aten ops with the most kernel time (GPU) or self time (CPU)."""
    from torch.autograd import DeviceType

    ops, calls = {}, 0
    for e in events:
        if e.device_type == DeviceType.CPU and e.name.startswith("aten::"):
            calls += 1
            own = e.self_device_time_total if on_gpu else e.self_cpu_time_total
            ops[e.name] = ops.get(e.name, 0.0) + own / 1e6
    launch = None
    if on_gpu:
        # kernels and copies; not the device-side spans of record_function ranges (a compiled
        # graph's, say), which cover the gaps between kernels too
        device = [(e.time_range.start, e.time_range.end) for e in events
                  if e.device_type == DeviceType.CUDA
                  and getattr(e, "activity_type", None) in DEVICE_WORK]
        busy, count = busy_seconds(device), len(device)
        launch = sum(e.time_range.elapsed_us() for e in events
                     if e.device_type == DeviceType.CPU and "Launch" in e.name
                     and e.name.startswith("cu")) / 1e6 / seconds
    else:
        busy, count = sum(ops.values()), calls
    top = sorted(ops.items(), key=lambda item: -item[1])[:3]
    return {"steps": steps, "seconds": seconds, "step_seconds": seconds / steps,
            "kernel_share": busy / seconds, "launch_share": launch, "ops_per_step": count / steps,
            "top_ops": [{"name": name, "seconds": t, "share": t / seconds} for name, t in top]}


class EpochClock:
    """``train``'s log: the time each epoch ends (after its losses reached the host, so a GPU's
    queue is empty), and a torch.profiler profile of epoch ``profiled``, the last."""

    def __init__(self, profiled: int, device):
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                               if device.type == "cuda" else [])
        self.profiler = profile(activities=activities)
        self.profiled, self.ends, self.started, self.window = profiled, [], None, None
        self.running = False

    def __call__(self, epoch: int, learners: list) -> None:
        now = time.perf_counter()
        if epoch == self.profiled:
            self.window = now - self.started
            self.stop()
            return
        self.ends.append(now)
        if epoch == self.profiled - 1:
            self.profiler.start()
            self.running, self.started = True, time.perf_counter()

    def stop(self) -> None:
        """End the profile, if it runs (also where training raised inside it)."""
        if self.running:
            self.profiler.stop()
            self.running = False

    @property
    def epoch_seconds(self) -> list:
        """Each timed epoch's seconds: every epoch's but the first (the warm-up) and the last
        (profiled)."""
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def measure(work: Workload, width: float, k: int, precision: str, device, steps: int,
            repeats: int, batch: int, fuse: str) -> dict:
    """One row of the utilisation table (module docstring)."""
    import torch

    from kdpipe import cost, models
    from kdpipe.train import Learner, Recipe, TeacherLogits, build_engines, generator, train

    arithmetic = cost.arithmetic(work.arch, work.input_shape, work.dtype, work.classes, width)
    step_flops = k * batch * (arithmetic.forward + arithmetic.backward)
    g = generator(0, device)
    n = batch * steps
    if work.dtype == "int64":  # character windows, a class per position
        x = torch.randint(0, work.classes, (n, *work.input_shape), generator=g, device=device)
        y = torch.randint(0, work.classes, (n, *work.input_shape), generator=g, device=device)
    else:  # images and features, normalised
        x = torch.randn(n, *work.input_shape, generator=g, device=device)
        y = torch.randint(0, work.classes, (n,), generator=g, device=device)
    teacher = TeacherLogits(torch.randn(*y.shape, work.classes, generator=g, device=device))
    learners = []
    for seed in range(k):
        model = models.build(work.arch, work.input_shape, work.classes, width)
        models.init_parameters(model, generator(seed, "cpu"))
        learners.append(Learner("kd", model.to(device), teacher, 0.5, order_seed=seed))
    recipe = Recipe(**{**work.recipe, "epochs": repeats + 2, "batch_size": batch,
                       "precision": precision})
    engines = sorted({type(e).__name__.lower()
                      for e in build_engines(learners, list(range(k)), recipe, {}, fuse)})
    clock = EpochClock(repeats + 2, device)
    try:
        train(learners, x, y, recipe, log=clock, fuse=fuse)
    finally:
        clock.stop()
    epochs = clock.epoch_seconds
    step_seconds = statistics.median(epochs) / steps
    return {"arch": work.arch, "setup": work.setup, "width": width, "k": k,
            "precision": precision, "engine": "+".join(engines), "batch_size": batch,
            "input_shape": list(work.input_shape), "dtype": work.dtype,
            "classes": work.classes, "optimizer": work.recipe["optimizer"],
            "augment": work.recipe["augment"], "steps_per_epoch": steps,
            "epoch_seconds": epochs, "step_seconds": step_seconds, "step_flops": step_flops,
            "flops_per_second": step_flops / step_seconds,
            "profile": profile_summary(clock.profiler.events(), clock.window, steps,
                                       device.type == "cuda")}


COLUMNS = (f"{'arch':10} {'width':>5} {'K':>3} {'precision':9} {'engine':11} {'batch':>5} "
           f"{'GFLOP/step':>10} {'ms/step':>9} {'GFLOP/s':>9} {'of peak':>8} {'kernels':>7} "
           f"{'launch':>6} {'ops/step':>8} {'prof ms':>9}  top ops (share of the profiled step)")


def row_name(row: dict) -> str:
    return f"{row['arch']} width {row['width']:g} K {row['k']} {row['precision']}"


def row_text(row: dict) -> str:
    start = f"{row['arch']:10} {row['width']:5g} {row['k']:3d} {row['precision']:9}"
    if "error" in row:
        return f"{start} failed: {row['error']}"
    found = row["profile"]
    launch = "-" if found["launch_share"] is None else f"{found['launch_share']:.3f}"
    top = " ".join(f"{op['name'].removeprefix('aten::')}={op['share']:.3f}"
                   for op in found["top_ops"])
    return (f"{start} {row['engine']:11} {row['batch_size']:5d} {row['step_flops'] / 1e9:10.4g} "
            f"{row['step_seconds'] * 1e3:9.4g} {row['flops_per_second'] / 1e9:9.4g} "
            f"{row['utilisation']:8.3g} {found['kernel_share']:7.3f} {launch:>6} "
            f"{found['ops_per_step']:8.0f} {found['step_seconds'] * 1e3:9.4g}  {top}")


def summary(rows: list, on_gpu: bool) -> str:
    """The best and worst row by share of peak, and where the rest of the worst one's step went
    (its profile)."""
    done = [r for r in rows if "error" not in r]
    if not done:
        return "summary: no row was measured"
    best = max(done, key=lambda r: r["utilisation"])
    worst = min(done, key=lambda r: r["utilisation"])
    found = worst["profile"]
    inside, ops = ("kernels", "kernels") if on_gpu else ("aten ops", "aten calls")
    host = ("Python, dispatch and autograd; "
            f"{found['launch_share']:.2f} in kernel-launch calls" if on_gpu
            else "Python, dispatch, autograd and the profiler's own")
    each = found["kernel_share"] * found["step_seconds"] / max(found["ops_per_step"], 1) * 1e6
    shares = sorted(r["profile"]["kernel_share"] for r in done)
    return (f"summary: best {row_name(best)} at {best['utilisation']:.3g} of peak ({inside} "
            f"{best['profile']['kernel_share']:.2f} of its profiled step); worst "
            f"{row_name(worst)} at {worst['utilisation']:.3g} of peak, where {inside} took "
            f"{found['kernel_share']:.2f} of the profiled step and the rest, "
            f"{1 - found['kernel_share']:.2f}, was host time outside them ({host}): "
            f"{found['ops_per_step']:.0f} {ops} a step, {each:.1f} us each on average; over the "
            f"{len(done)} rows measured {inside} took {shares[0]:.2f}-{shares[-1]:.2f} of a "
            f"profiled step (median {statistics.median(shares):.2f})")


def utilisation(args) -> bool:
    """Print the utilisation table (module docstring); return whether every row was measured."""
    import torch

    from kdpipe.io import write_json
    from kdpipe.jobs import setup_torch
    from kdpipe.train import PRECISIONS

    found = workloads(STUDIES)
    archs = listed(args.archs, str, "--archs") if args.archs else list(found)
    unknown = [a for a in archs if a not in found]
    if unknown:
        sys.exit(f"--archs: no workload for {', '.join(unknown)}; known: {', '.join(found)}")
    precisions = listed(args.precisions, str, "--precisions")
    if any(p not in PRECISIONS for p in precisions):
        sys.exit(f"--precisions {args.precisions!r}: each one of {', '.join(PRECISIONS)}")
    widths = listed(args.widths or ("0.125" if args.quick else "0.25,1"), float, "--widths")
    ks = listed(args.ks or ("1,2" if args.quick else "1,8"), int, "--ks")
    steps = args.steps or (2 if args.quick else 20)
    device = torch.device(setup_torch(1, "auto"))  # as a training job
    on_gpu = device.type == "cuda"
    size = args.matmul_size or (256 if args.quick else 8192 if on_gpu else 2048)
    head = {"device": device_name(device), "torch": torch.__version__,
            "cuda": torch.version.cuda if on_gpu else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]), "fuse": args.fuse}
    print(f"Training utilisation on {head['device']} (torch {head['torch']}, CUDA "
          f"{head['cuda'] or 'none'}), fuse={args.fuse}, {steps} steps an epoch, median of "
          f"{args.repeats} epochs after a warm-up one, then one profiled", flush=True)
    peaks = {p: matmul_peak(p, device, size, 0.2 if args.quick else 1.0) for p in precisions}
    print(f"peak ({size}x{size} matmul): " + ", ".join(
        f"{p} {v / 1e9:.4g} GFLOP/s" for p, v in peaks.items()), flush=True)
    print(COLUMNS, flush=True)
    rows = []
    for arch in archs:
        work = found[arch]
        batch = args.batch_size or work.recipe["batch_size"]
        batch = min(batch, 16) if args.quick else batch
        for width in widths:
            for precision in precisions:
                for k in ks:
                    try:
                        row = measure(work, width, k, precision, device, steps, args.repeats,
                                      batch, args.fuse)
                        row["peak_flops_per_second"] = peaks[precision]
                        row["utilisation"] = row["flops_per_second"] / peaks[precision]
                    except RuntimeError as error:  # out of memory, a kernel that fails
                        row = {"arch": arch, "width": width, "k": k, "precision": precision,
                               "error": str(error).strip().splitlines()[0]}
                        if on_gpu:
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(row_text(row), flush=True)
                    if args.json:
                        write_json(args.json, {**head, "matmul_size": size, "peaks": peaks,
                                               "complete": False, "rows": rows})
    print(summary(rows, on_gpu), flush=True)
    if args.json:
        write_json(args.json, {**head, "matmul_size": size, "peaks": peaks, "complete": True,
                               "rows": rows})
    return all("error" not in r for r in rows)


if __name__ == "__main__":
    main()
