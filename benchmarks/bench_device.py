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
"""
import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU")
    p.add_argument("--samples", type=int, help="training images per epoch (default 4096; quick 256)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, help="width multiplier (default 1; quick 0.125)")
    p.add_argument("--epochs-per-student", type=int, default=200,
                   help="epochs one student trains (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per figure (median)")
    p.add_argument("--ks", default="1,2,8", help="students fused (default 1,2,8)")
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
    args = p.parse_args()
    if args.calibrate:
        calibrate(args)
        return

    import torch

    from kdpipe import config, models
    from kdpipe.jobs import setup_torch
    from kdpipe.train import Learner, Recipe, TeacherLogits, generator, train

    device = setup_torch(1, "auto")  # as a training job: on CUDA, deterministic algorithms
    side, width = (16, 0.125) if args.quick else (32, 1.0)
    width = args.width or width
    n = args.samples or (256 if args.quick else 4096)
    batch = min(args.batch_size, n)
    g = generator(0, device)
    x = torch.randn(n, 3, side, side, generator=g, device=device)
    y = torch.randint(0, 10, (n,), generator=g, device=device)
    teacher = torch.randn(n, 10, generator=g, device=device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU, 1 thread"
    print(f"ResNet-18 width {width:g}, {n} images {side}x{side}, batch {batch}, on {name}, "
          f"fuse={args.fuse}")
    print(f"{'K':>3} {'precision':9} {'s/epoch':>8} {'images/s':>10} {'students/h':>11} {'speed-up':>8}")
    for precision in args.precisions.split(","):
        single = None
        for k in (int(v) for v in args.ks.split(",")):
            learners = []
            for seed in range(k):
                model = models.build("resnet18", (3, side, side), 10, width).to(device)
                models.init_parameters(model, generator(seed, device))
                learners.append(Learner("kd", model, TeacherLogits(teacher), 0.5, order_seed=seed))
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


if __name__ == "__main__":
    main()
