"""The training loop, the losses and the controls (docs/protocol.md section 1)."""
import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_fused_as_alone, fresh_mlp, full_recipe, toy_data
from kdpipe import models
from kdpipe.methods import cross_entropy, kd_loss, stage_mse_loss
from kdpipe.train import (Learner, RandomLogits, TeacherLogits, TeacherModel, generator,
                          seed_for, train)

torch.set_num_threads(1)


def test_random_logits_are_uniform_fresh_every_step_and_reproducible():
    noise = RandomLogits(100, 10, seed=7)
    index = torch.arange(32)
    a, b = noise(index, None, 0, 0), noise(index, None, 0, 1)
    assert a.shape == (32, 10) and 0 <= a.min() and a.max() < 1
    assert not torch.equal(a, b)  # fresh at every step
    again = RandomLogits(100, 10, seed=7)
    assert torch.equal(again(index, None, 0, 0), a) and torch.equal(again(index, None, 0, 1), b)
    # each epoch's stream is derived from the epoch alone: a resumed run draws the same noise
    assert torch.equal(RandomLogits(100, 10, seed=7)(index, None, 3, 0), noise(index, None, 3, 0))
    big = RandomLogits(10, 10, seed=1)(torch.arange(10_000) % 10, None, 0, 0)
    assert big.mean().item() == pytest.approx(0.5, abs=0.01)


def test_random_logits_fixed_and_gaussian_options():
    fixed = RandomLogits(50, 4, seed=3, resample="fixed")
    index = torch.tensor([3, 7, 3])
    first = fixed(index, None, 0, 0)
    assert torch.equal(first, fixed(index, None, 5, 9)) and torch.equal(first[0], first[2])
    gauss = RandomLogits(10, 4, seed=3, distribution="gaussian")(torch.arange(5000) % 10, None, 0, 0)
    assert gauss.min() < 0 and gauss.std().item() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="distribution"):
        RandomLogits(10, 4, seed=3, distribution="laplace")


def test_teacher_logits_index_the_cache():
    cache = torch.arange(12.0).view(4, 3)
    assert torch.equal(TeacherLogits(cache)(torch.tensor([2, 0]), None, 0, 0), cache[[2, 0]])


def test_training_is_deterministic_and_depends_on_order_seed():
    x, y = toy_data()
    recipe = full_recipe(epochs=3, batch_size=16)
    runs = []
    for order_seed in (11, 11, 12):
        model = fresh_mlp()
        train([Learner("m", model, order_seed=order_seed)], x, y, recipe)
        runs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_learners_trained_together_equal_learners_trained_alone():
    """The kd+rcd pair shares batches, yet each model gets exactly its own gradient."""
    x, y = toy_data()
    teacher = torch.randn(len(x), 3, generator=generator(5))
    recipe = full_recipe(epochs=2, batch_size=16, optimizer="sgd", lr=0.1)

    def learners():
        base = fresh_mlp()
        return [Learner("kd", copy.deepcopy(base), TeacherLogits(teacher), 0.5, 2.0, order_seed=4),
                Learner("rcd", copy.deepcopy(base), RandomLogits(len(x), 3, seed=9), 0.5, 2.0,
                        order_seed=4)]

    together = learners()
    train(together, x, y, recipe)
    for k in range(2):
        alone = learners()[k]
        train([alone], x, y, recipe)
        for p, q in zip(alone.model.parameters(), together[k].model.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert together[0].history[-1]["loss"] != together[1].history[-1]["loss"]


def test_history_records_every_epoch():
    x, y = toy_data()
    learner = Learner("m", fresh_mlp(), order_seed=0)
    seen = []
    train([learner], x, y, full_recipe(epochs=4, batch_size=10), log=lambda e, ls: seen.append(e))
    assert seen == [1, 2, 3, 4]
    assert [h["epoch"] for h in learner.history] == [1, 2, 3, 4]
    assert all(0 <= h["accuracy"] <= 1 and h["loss"] > 0 for h in learner.history)


def test_init_parameters_uses_only_the_generator():
    a, b = fresh_mlp(seed=3), fresh_mlp(seed=3)
    torch.manual_seed(123)  # the global RNG must not matter
    c = fresh_mlp(seed=3)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)
    d = fresh_mlp(seed=4)
    assert not torch.equal(next(a.parameters()), next(d.parameters()))
    linear = a.stage1[0]
    bound = math.sqrt(6 / ((1 + 5) * linear.in_features))  # kaiming_uniform, a = sqrt(5)
    assert linear.weight.abs().max() <= bound


def test_width_multiplier_scales_every_architecture():
    for arch, shape in (("mlp", (1, 8, 8)), ("cnn", (1, 8, 8))):
        sizes = [sum(p.numel() for p in models.build(arch, shape, 10, w).parameters())
                 for w in (0.5, 1, 2)]
        assert sizes[0] < sizes[1] < sizes[2]
        out = models.build(arch, shape, 10, 0.5)(torch.zeros(2, *shape))
        assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="width"):
        models.build("mlp", (4,), 2, 0)
    with pytest.raises(ValueError, match="unknown architecture 'resnet-9000'"):
        models.build("resnet-9000", (4,), 2, 1)


def test_seed_streams_are_distinct():
    assert seed_for("order", "teacher", 0) != seed_for("order", "student", 0)
    assert seed_for("init", 0.5, 1) != seed_for("init", 2.0, 1)
    assert seed_for("init", 0.5, 1) == seed_for("init", 0.5, 1)


def test_noise_of_a_language_model_has_a_vector_per_position():
    noise = RandomLogits(8, (5, 4), seed=1)(torch.tensor([0, 3]), None, 0, 0)
    assert noise.shape == (2, 5, 4)


def test_augmentation_feeds_the_teacher_the_augmented_batch():
    seen = []

    class Recorder(TeacherModel):
        def __call__(self, index, inputs, epoch, step):
            seen.append((index.clone(), inputs.clone()))
            return super().__call__(index, inputs, epoch, step)

    g = generator(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    teacher = models.build("cnn", (1, 8, 8), 3, 0.25)
    models.init_parameters(teacher, generator(1))
    student = Learner("kd", fresh_cnn(), Recorder(teacher), alpha=0.5, order_seed=5)
    recipe = full_recipe(epochs=2, batch_size=8, augment="crop_flip", augment_options={"padding": 2})
    train([student], x, y, recipe)
    assert len(seen) == 4
    assert any(not torch.equal(inputs, x[index]) for index, inputs in seen)  # augmented
    again = Learner("kd", fresh_cnn(), Recorder(teacher), alpha=0.5, order_seed=5)
    seen.clear()
    train([again], x, y, recipe)
    for p, q in zip(student.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)  # augmentation draws come from the seeded streams


def fresh_cnn():
    model = models.build("cnn", (1, 8, 8), 3, 0.25)
    models.init_parameters(model, generator(2))
    return model


def test_feature_matching_loss_and_staged_forward():
    from kdpipe.train import FeatureMatch, staged_forward

    model = fresh_cnn()
    x = torch.rand(2, 1, 8, 8, generator=generator(3))
    features, logits = staged_forward(model, "stage1", x)
    assert torch.equal(logits, model(x)) and features.shape == (2, 8, 4, 4)
    assert torch.equal(staged_forward(model, "stage1", x, stop=True), features)
    with pytest.raises(ValueError, match="no stage 'stage9'"):
        staged_forward(model, "stage9", x)
    y = torch.tensor([0, 2])
    target = torch.zeros_like(features)
    loss = stage_mse_loss((logits, features), y, target, 0.5)
    expected = F.cross_entropy(logits, y) + 0.5 * (features ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert FeatureMatch("stage1").adapt(features) is features


def test_stage_adapters_map_student_widths_to_the_teacher():
    from kdpipe.jobs import stage_adapter

    x = torch.rand(2, 1, 8, 8, generator=generator(3))
    teacher = fresh_cnn()
    narrow = models.build("cnn", (1, 8, 8), 3, 0.5)
    conv = stage_adapter(narrow, teacher, "stage1", x, generator(1))
    assert isinstance(conv, torch.nn.Conv2d) and (conv.in_channels, conv.out_channels) == (16, 8)
    assert stage_adapter(teacher, teacher, "stage1", x, generator(1)) is None
    wide_mlp, mlp = models.build("mlp", (1, 8, 8), 3, 2), models.build("mlp", (1, 8, 8), 3, 1)
    linear = stage_adapter(wide_mlp, mlp, "stage2", x, generator(1))
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (512, 256)


def test_training_stops_at_a_target_train_loss():
    x, y = toy_data()
    learner = Learner("m", fresh_mlp(width=1), order_seed=0)
    train([learner], x, y, full_recipe(epochs=50, batch_size=16, lr=0.01, stop_at_train_loss=0.5))
    assert learner.history[-1]["loss"] <= 0.5 < learner.history[-2]["loss"]
    assert len(learner.history) < 50


def test_downweighted_classes_scale_the_wrong_class_mass_and_renormalise():
    from kdpipe.train import DownweightedClasses

    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2])
    for t in (1.0, 2.0):
        target = DownweightedClasses(lambda i, x, e, s: logits[i], labels, 0.25, t, 3)
        got = torch.softmax(target(torch.arange(2), None, 0, 0) / t, -1)
        p = torch.softmax(logits / t, -1) * torch.where(F.one_hot(labels, 3) == 1, 1.0, 0.25)
        torch.testing.assert_close(got, p / p.sum(-1, keepdim=True))
    drop = DownweightedClasses(lambda i, x, e, s: logits[i], labels, 0.0, 1.0, 3)
    q = torch.softmax(drop(torch.arange(2), None, 0, 0), -1)
    torch.testing.assert_close(q, F.one_hot(labels, 3).float(), atol=1e-12, rtol=0)
    loss = kd_loss(torch.randn(2, 3), labels, drop(torch.arange(2), None, 0, 0), 0.5, 1.0)
    assert torch.isfinite(loss)


def test_kd_masked_classes_differs_from_siddo_unless_its_weight_is_zero():
    """With weight 0 the class variant's target is one-hot on the label, so kd-masked trains
    exactly like siddo (cross-entropy): the config refuses that combination."""
    from kdpipe.train import DownweightedClasses

    x, y = toy_data()
    teacher = torch.randn(len(x), 3, generator=generator(5))
    recipe = full_recipe(epochs=2, batch_size=16, optimizer="sgd", lr=0.1)

    def trained(weight):
        target = None if weight is None else DownweightedClasses(TeacherLogits(teacher), y,
                                                                 weight, 1.0, 3)
        learner = Learner("m", fresh_mlp(), target, alpha=0.5, order_seed=4)
        train([learner], x, y, recipe)
        return torch.cat([p.flatten() for p in learner.model.parameters()])

    siddo = trained(None)
    torch.testing.assert_close(trained(0.0), siddo, rtol=0, atol=1e-6)
    assert (trained(0.25) - siddo).abs().max() > 1e-3


@pytest.mark.parametrize("optimizer, reference", [
    ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=0.1)),
    ("adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1)),
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-3, weight_decay=0.1, momentum=0.9,
                                       nesterov=True)),
])
def test_a_single_learner_trains_exactly_as_a_plain_loop_with_its_own_order(optimizer, reference):
    """Independent reference: a hand-written loop with torch.optim's optimizer (default, unfused
    implementation) over torch.randperm batches drawn from seed_for(order_seed, epoch), as kdpipe
    has always drawn them."""
    x, y = toy_data()
    learner = Learner("m", fresh_mlp(), order_seed=21)
    train([learner], x, y, full_recipe(epochs=3, batch_size=16, optimizer=optimizer,
                                       weight_decay=0.1))
    model = fresh_mlp()
    optimizer = reference(model.parameters())
    for epoch in range(3):
        order = torch.randperm(len(x), generator=generator(seed_for(21, epoch)))
        for i in range(0, len(x), 16):
            index = order[i:i + 16]
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    for p, q in zip(learner.model.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_training_does_not_import_torch_dynamo_or_sympy():
    """torch.optim.Optimizer's methods import torch._dynamo on first use, 2-3 s of every
    training job; kdpipe's Optimizer calls torch.optim's functional kernels instead. A loss
    vmapped over fused learners must not run a Python decomposition (F.nll_loss's imports sympy,
    0.4 s, and runs at every step): the fused kd, rcd and siddo here would import it."""
    code = ("import sys, torch; from conftest import fresh_mlp, full_recipe, toy_data; "
            "from kdpipe.train import Learner, RandomLogits, train; x, y = toy_data(); "
            "[train([Learner('m', fresh_mlp(), order_seed=1)], x, y, "
            "full_recipe(epochs=1, batch_size=16, optimizer=o)) for o in ('adam', 'adamw', 'sgd')]; "
            "noise = lambda: RandomLogits(len(x), 3, seed=2); "
            "train([Learner('kd', fresh_mlp(), noise(), 0.5, order_seed=1), "
            "Learner('rcd', fresh_mlp(), noise(), 0.9, order_seed=1), "
            "Learner('siddo', fresh_mlp(), order_seed=1)], x, y, "
            "full_recipe(epochs=1, batch_size=16), fuse='always'); "
            "sys.exit(sorted({'torch._dynamo', 'sympy'} & set(sys.modules)) or None)")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_each_learner_draws_its_own_batch_order():
    x, y = toy_data()
    seen = {}

    def recorder(name):
        def target(index, inputs, epoch, step):
            seen.setdefault(name, []).append(index.clone())
            return torch.zeros(len(index), 3)
        return target

    recipe = full_recipe(epochs=2, batch_size=16)
    together = [Learner(name, fresh_mlp(), recorder(name), 0.5, order_seed=seed)
                for name, seed in (("a", 1), ("b", 2), ("c", 1))]
    train(together, x, y, recipe)
    assert all(torch.equal(p, q) for p, q in zip(seen["a"], seen["c"]))  # one seed, one order
    assert not all(torch.equal(p, q) for p, q in zip(seen["a"], seen["b"]))
    alone = Learner("b", fresh_mlp(), recorder("b alone"), 0.5, order_seed=2)
    train([alone], x, y, recipe)
    assert all(torch.equal(p, q) for p, q in zip(seen["b"], seen["b alone"]))
    for p, q in zip(alone.model.parameters(), together[1].model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_stop_at_train_loss_stops_each_learner_on_its_own():
    """A learner reaching the target train loss stops; the others are not held back, nor
    is it trained on until they too reach it."""
    x, y = toy_data()
    recipe = full_recipe(epochs=40, batch_size=16, lr=0.01, stop_at_train_loss=0.6)

    def learners():
        return [Learner("fast", fresh_mlp(width=1), order_seed=0),
                Learner("slow", fresh_mlp(width=0.05), order_seed=0)]

    together = learners()
    train(together, x, y, recipe)
    fast, slow = together
    assert fast.history[-1]["loss"] <= 0.6 < fast.history[-2]["loss"]
    assert len(fast.history) < len(slow.history)
    for k in range(2):
        alone = learners()[k]
        train([alone], x, y, recipe)
        assert len(alone.history) == len(together[k].history)
        for p, q in zip(alone.model.parameters(), together[k].model.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


# Per architecture: a small input, a width and a recipe where training is not chaotic (a batch
# norm over 8 samples of a 1x1 map amplifies a float rounding difference step after step).
FUSION_CASES = {
    "mlp": ((1, 8, 8), 0.25), "cnn": ((1, 8, 8), 0.25), "resnet18": ((3, 16, 16), 0.125),
    "vgg19": ((3, 32, 32), 0.0625), "vit": ((3, 8, 8), 0.25), "m5": ((1, 1200), 0.0625),
    "logmel_cnn": ((1, 16, 16), 0.0625), "char_lstm": ((12,), 0.05), "char_gpt": ((12,), 0.1),
}


def fusion_learners(arch, x, y, classes=5):
    """kd and rcd from one init on one order, siddo from another init on another order, on the
    device of ``x``."""
    shape, width = FUSION_CASES[arch]
    base = models.build(arch, shape, classes, width)
    models.init_parameters(base, generator(1))
    other = models.build(arch, shape, classes, width)
    models.init_parameters(other, generator(2))
    base, other = base.to(x.device), other.to(x.device)
    teacher = torch.randn(*y.shape, classes, generator=generator(4)).to(x.device)
    return [Learner("kd", copy.deepcopy(base), TeacherLogits(teacher), 0.5, 2.0, order_seed=1),
            Learner("rcd", copy.deepcopy(base), RandomLogits(len(x), (*y.shape[1:], classes), 3,
                                                             device=x.device),
                    0.3, order_seed=1),
            Learner("siddo", other, order_seed=2)]


def fusion_data(arch, device="cpu", n=16, classes=5):
    shape, _ = FUSION_CASES[arch]
    g = generator(0)
    if arch.startswith("char"):
        x = torch.randint(0, classes, (n, *shape), generator=g)
        y = torch.randint(0, classes, (n, *shape), generator=g)
    else:
        x, y = torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    return x.to(device), y.to(device)


@pytest.mark.parametrize("arch", sorted(models.ARCHS))
def test_a_student_trained_fused_ends_where_it_ends_trained_alone(arch, device):
    """Fused (stacked) training computes each learner's own step: parameters and batch-norm
    statistics agree with the learner trained alone to float rounding (atol 1e-4, rtol 1e-3 after
    4 SGD steps). The stacked kernels sum in another order and training amplifies a difference
    step by step; with larger steps the plain CPU convolution is the one that strays: for some
    shapes its fp32 gradient is 2e-2 (relative) off the float64 one while the stacked gradient
    is within 1e-6 (see the next test)."""
    from kdpipe.train import Alone, Fused, build_engines

    x, y = fusion_data(arch, device)
    recipe = full_recipe(epochs=2, batch_size=8, optimizer="sgd", lr=1e-3, momentum=0.0)
    engines = build_engines(fusion_learners(arch, x, y), [0, 1, 2], recipe, {}, "always")
    expected = Alone if arch == "char_lstm" else Fused  # vmap has no LSTM batching rule
    assert [type(e) for e in engines] == [expected] * (3 if expected is Alone else 1)
    together = fusion_learners(arch, x, y)
    train(together, x, y, recipe, fuse="always")
    for k in range(3):
        alone = fusion_learners(arch, x, y)[k]
        train([alone], x, y, recipe)
        for (name, a), b in zip(alone.model.state_dict().items(),
                                together[k].model.state_dict().values()):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=lambda m: f"{arch} {name}: {m}")
        for a, b in zip(alone.history, together[k].history):
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "logmel_cnn"])
def test_training_is_identical_run_to_run_on_the_device(arch, device):
    """Fused and alone, two runs end in identical weights and statistics. On CUDA that takes the
    deterministic algorithms a job sets up (``setup_torch``): without them, on an H200, these
    models' weights ended 4e-3 to 3e-2 apart after these 3 epochs."""
    x, y = fusion_data(arch, device, n=64)
    recipe = full_recipe(epochs=3, batch_size=16, optimizer="adamw", lr=1e-2)
    for fuse in ("always", "never"):
        runs = []
        for _ in range(2):
            learners = fusion_learners(arch, x, y)
            train(learners, x, y, recipe, fuse=fuse)
            runs.append(learners)
        for a, b in zip(*runs):
            for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
                assert torch.equal(p, q), f"{arch}, fuse={fuse}: {a.name} {name}"


def test_fused_bf16_students_with_batch_norm_end_near_their_lone_runs(device):
    """bf16 autocast, fused: batch norm takes its input in float32 (vmap's batch norm failed on a
    bf16 input against float32 statistics on CUDA); each learner ends within bf16's reach of
    its lone run."""
    x, y = fusion_data("resnet18", device)
    recipe = full_recipe(epochs=1, batch_size=8, optimizer="sgd", lr=1e-2, momentum=0.0,
                         precision="bf16")
    together = fusion_learners("resnet18", x, y)
    train(together, x, y, recipe, fuse="always")
    for k in range(3):
        alone = fusion_learners("resnet18", x, y)[k]
        train([alone], x, y, recipe)
        for (name, a), b in zip(alone.model.state_dict().items(),
                                together[k].model.state_dict().values()):
            torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2, msg=lambda m: f"{name}: {m}")


def test_fused_training_is_identical_run_to_run_and_keeps_adam_state_per_learner(device):
    x, y = fusion_data("cnn", device)
    recipe = full_recipe(epochs=2, batch_size=8, optimizer="adamw", lr=1e-2, weight_decay=0.1)
    runs = []
    for _ in range(2):
        learners = fusion_learners("cnn", x, y)
        train(learners, x, y, recipe, fuse="always")
        runs.append(learners)
    for a, b in zip(*runs):
        assert a.history == b.history
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            assert torch.equal(p, q)
    alone = fusion_learners("cnn", x, y)[2]
    train([alone], x, y, recipe)
    for p, q in zip(alone.model.parameters(), runs[0][2].model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("tf32", 5e-3), ("bf16", 5e-2)])
def test_precision_sets_the_arithmetic_of_the_run_and_restores_torchs_own(precision, tolerance,
                                                                          device):
    """A convolution and a matmul against float64: fp32 is IEEE float32 on every device (torch's
    default would give cuDNN's convolutions TF32 inputs, about 5e-4 off), tf32 and bf16 are
    within their mantissas' reach; torch's own setting is back afterwards."""
    from kdpipe.train import autocast, precision_context

    g = generator(0)
    x, w = torch.randn(8, 64, 16, 16, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    a, b = torch.randn(256, 512, generator=g), torch.randn(512, 256, generator=g)
    references = F.conv2d(x.double(), w.double()), a.double() @ b.double()
    before = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    dev = torch.device(device)
    with precision_context(precision, dev), autocast(precision, dev):
        outs = F.conv2d(x.to(dev), w.to(dev)), a.to(dev) @ b.to(dev)
    for out, reference in zip(outs, references):
        error = ((out.double().cpu() - reference).norm() / reference.norm()).item()
        assert error < tolerance
        if precision != "fp32" and dev.type == "cuda":
            assert error > 1e-5  # the reduced precision was used
    assert (torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cuda.matmul.fp32_precision) == before
    with pytest.raises(ValueError, match="unknown precision 'fp16'; known: fp32, tf32, bf16"):
        with precision_context("fp16", dev):
            pass


def test_fused_gradients_match_a_float64_computation(device):
    """An independent reference: each model's cross-entropy gradient in float64, on its own
    batch (learners of different order seeds get different inputs)."""
    from kdpipe.train import Fused, precision_context

    g = generator(0)
    x, y = torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 5, (16,), generator=g)
    x, y = x.to(device), y.to(device)
    learners = []
    for k in range(3):
        model = models.build("resnet18", (3, 16, 16), 5, 0.125)
        models.init_parameters(model, generator(k))
        learners.append(Learner(f"m{k}", model.to(device), order_seed=k))
    references = [copy.deepcopy(l.model).double() for l in learners]
    recipe = full_recipe(epochs=1, batch_size=16, optimizer="sgd", lr=0.0, momentum=0)
    fused = Fused(learners, recipe, [None] * 3)
    indices = [torch.randperm(16, generator=generator(10 + k))[:8].to(device) for k in range(3)]
    batches = {k: (index, x[index], y[index]) for k, index in enumerate(indices)}
    with precision_context("fp32", x.device):  # as in train: IEEE float32 on CUDA too
        fused.step(batches, 0, 0, 0.0)
    for k, reference in enumerate(references):
        index, xb, yb = batches[k]
        F.cross_entropy(reference(xb.double()), yb).backward()
        scale = max(p.grad.abs().max() for p in reference.parameters())
        for name, p in reference.named_parameters():
            kept = f"model.{name}"
            got = fused.natural(kept, fused.params[kept].grad)[k].double()
            assert (got - p.grad).abs().max() / scale < 1e-5, name


def test_a_fused_learner_that_reaches_the_target_loss_stops_and_the_others_go_on(tmp_path):
    """Fused, per-learner stop_at_train_loss: the stopped slice must not move (no Adam moment
    or weight decay update after its last epoch), and a checkpointed run resumed after a stop
    ends as the uninterrupted one."""
    from kdpipe.train import Checkpoint

    x, y = toy_data()
    recipe = full_recipe(epochs=30, batch_size=16, optimizer="adamw", lr=0.01, weight_decay=0.5,
                         stop_at_train_loss=0.7)

    def learners():
        return [Learner(f"m{s}", fresh_mlp(width=0.5, seed=s), order_seed=s) for s in (1, 2, 3)]

    together = learners()
    train(together, x, y, recipe, fuse="always")
    lengths = [len(l.history) for l in together]
    assert len(set(lengths)) > 1 and min(lengths) < 30
    for k in range(3):
        alone = learners()[k]
        train([alone], x, y, recipe)
        assert len(alone.history) == lengths[k]
        for p, q in zip(alone.model.parameters(), together[k].model.parameters()):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4)

    checkpoint = Checkpoint(tmp_path / "state.pt", every=1, key="job")
    stop_at = min(lengths) + 1

    def die(epoch, _):
        if epoch == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(learners(), x, y, recipe, log=die, checkpoint=checkpoint, fuse="always")
    resumed = learners()
    train(resumed, x, y, recipe, checkpoint=checkpoint, fuse="always")
    for a, b in zip(together, resumed):
        assert a.history == b.history
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            assert torch.equal(p, q)


def test_the_engine_fuses_enough_small_models_and_trains_the_rest_alone(device):
    """fuse="auto" on the test device: the limits of AUTO_FUSE for its type."""
    from kdpipe.train import AUTO_FUSE, Alone, Fused, build_engines, fusion_key

    limits = AUTO_FUSE[torch.device(device).type]
    n = limits.min_learners

    def size(learners):
        return sum(p.numel() for p in learners[0].parameters())

    def engines(learners, fuse="auto"):
        recipe = full_recipe(epochs=1, batch_size=16)
        return sorted((type(e) for e in build_engines(learners, range(len(learners)), recipe,
                                                      {}, fuse)), key=str)

    def built(arch, shape, width, count=n):
        learners = []
        for k in range(count):
            model = models.build(arch, shape, 3, width)
            models.init_parameters(model, generator(k))
            learners.append(Learner(f"{arch} {k}", model.to(device), order_seed=k))
        return learners

    def around_the_limit(arch, shape):
        """Learners of the widest width within the limit, and of the next width above it."""
        widths = [w for w in (0.25, 0.5, 1, 2, 4, 8, 16)
                  if size(built(arch, shape, w, 1)) <= limits.max_parameters]
        return built(arch, shape, widths[-1]), built(arch, shape, 2 * widths[-1])

    small, large = around_the_limit("mlp", (1, 8, 8))
    assert size(small) <= limits.max_parameters < size(large)
    assert engines(small + large) == sorted([Fused] + [Alone] * n, key=str)
    assert engines(large, "always") == [Fused]
    assert engines(small, "never") == [Alone] * n
    # too few to spread the stacked step's overhead: alone, unless asked
    assert engines(small[:n - 1]) == [Alone] * (n - 1)
    assert engines(small[:2], "always") == [Fused]
    # the same limits with convolutions
    small_cnn, large_cnn = around_the_limit("cnn", (1, 8, 8))
    assert engines(small_cnn) == [Fused] and engines(large_cnn) == [Alone] * n
    m5 = built("m5", (1, 1200), 0.0625)
    assert size(m5) <= limits.max_parameters
    assert engines(m5) == ([Alone] * n if torch.nn.Conv1d in limits.unfused else [Fused])
    # a device type without measured limits trains alone unless asked
    meta = Learner("meta", fresh_mlp().to("meta"), order_seed=0)
    assert fusion_key(meta) is None and fusion_key(meta, "always") is not None


def test_fused_feature_matching_and_sample_weighted_learners_equal_their_lone_runs():
    """fm and fm-rcd (with adapters) form one stacked group, kd-masked (sample weights) and kd
    another; each ends as it does alone."""
    from kdpipe.jobs import stage_adapter
    from kdpipe.train import FeatureMatch, Fused, TeacherFeatures, build_engines

    x = torch.rand(16, 1, 8, 8, generator=generator(0))
    y = torch.randint(0, 3, (16,), generator=generator(1))
    teacher = fresh_cnn()
    logits = torch.randn(16, 3, generator=generator(2))
    weights = (torch.arange(16) % 2).float()

    def learners():
        made = []
        for name in ("fm", "fm-rcd", "kd-masked", "kd"):
            model = models.build("cnn", (1, 8, 8), 3, 0.5)
            models.init_parameters(model, generator(3))
            fm = None
            if name.startswith("fm"):
                fm = FeatureMatch("stage1", stage_adapter(model, teacher, "stage1", x[:2],
                                                          generator(4)))
            target = {"fm": TeacherFeatures(teacher, "stage1"),
                      "fm-rcd": RandomLogits(16, (8, 4, 4), seed=5),
                      "kd-masked": TeacherLogits(logits), "kd": TeacherLogits(logits)}[name]
            made.append(Learner(name, model, target, 0.5, 2.0 if name == "kd" else 1.0,
                                sample_weights=weights if name == "kd-masked" else None,
                                feature_match=fm, order_seed=len(made) % 2))
        return made

    recipe = full_recipe(epochs=2, batch_size=8, optimizer="sgd", lr=1e-2, momentum=0.0)
    engines = build_engines(learners(), range(4), recipe, {}, "always")
    assert [type(e) for e in engines] == [Fused] * 2
    assert_fused_as_alone(learners, x, y, recipe, atol=1e-5, rtol=1e-4)


def stacked_kd_formula(logits, labels, targets, alpha, temperature):
    """The KD loss of K learners written over the stacked tensors ([K, B, C] logits, [K]
    alpha and T; a learner without a target has alpha 0 and zero targets), as one expression."""
    log_p = F.log_softmax(logits, dim=-1)
    ce = -log_p.gather(-1, labels[..., None]).squeeze(-1).mean(-1)
    t = temperature[:, None, None]
    log_p = F.log_softmax(logits / t, dim=-1)
    log_q = F.log_softmax(targets / t, dim=-1)
    per_sample = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (1 - alpha) * ce + alpha * temperature ** 2 * per_sample.mean(-1)


def test_a_fused_step_groups_learners_by_loss_and_computes_the_stacked_formula_exactly():
    """The losses of a fused kd, rcd and siddo group (kd_loss vmapped over kd and rcd, the
    cross-entropy over siddo) and their gradients are, bit for bit, those of the KD loss written
    over the stacked tensors: what keeps fused students identical to those trained before the
    losses had one home."""
    from kdpipe.train import Fused

    x, y = toy_data()
    teacher = torch.randn(len(x), 3, generator=generator(5))
    learners = [Learner("kd", fresh_mlp(seed=1), TeacherLogits(teacher), 0.5, 2.0, order_seed=1),
                Learner("siddo", fresh_mlp(seed=2), order_seed=1),
                Learner("rcd", fresh_mlp(seed=1), RandomLogits(len(x), 3, seed=9), 0.1,
                        order_seed=1)]
    fused = Fused(learners, full_recipe(epochs=1, batch_size=16), [None] * 3)
    assert [group.members for group in fused.loss_groups] == [[0, 2], [1]]
    index = torch.arange(16)
    picked = [(index, x[index], y[index])] * 3
    targets = [None if l.target is None else l.target(index, x[index], 0, 0) for l in learners]
    out = torch.randn(3, 16, 3, generator=generator(7), requires_grad=True)
    labels = y[index].expand(3, 16)
    parts = [fused.group_loss(group, out, labels, targets, picked) for group in fused.loss_groups]
    grouped = torch.empty(3)
    for group, part in zip(fused.loss_groups, parts):
        grouped[group.index] = part.detach()
    got, = torch.autograd.grad(sum(part.sum() for part in parts), out)
    stacked_targets = torch.stack([torch.zeros(16, 3) if t is None else t for t in targets])
    reference = stacked_kd_formula(out, labels, stacked_targets, torch.tensor([0.5, 0.0, 0.1]),
                                   torch.tensor([2.0, 1.0, 1.0]))
    expected, = torch.autograd.grad(reference.sum(), out)
    assert torch.equal(grouped, reference.detach()) and torch.equal(got, expected)


def lone_kd_formula(logits, labels, target, alpha, temperature):
    """The KD loss of one learner in torch's own terms: nll_loss of the log-softmax, and
    kl_div's batch mean, which at T = 1 takes the same log-probabilities as the cross-entropy."""
    log_p = F.log_softmax(logits, dim=-1)
    ce = F.nll_loss(log_p, labels)
    if temperature != 1:
        log_p, target = F.log_softmax(logits / temperature, dim=-1), target / temperature
    kl = F.kl_div(log_p, F.log_softmax(target, dim=-1), log_target=True, reduction="batchmean")
    return (1 - alpha) * ce + alpha * temperature * temperature * kl


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_a_lone_kd_step_has_the_gradient_of_torchs_own_losses(temperature):
    """Alone, kd_loss's gradient is, bit for bit, that of nll_loss and kl_div's batch mean (at
    T = 1 sharing the cross-entropy's log-probabilities): what keeps students trained alone
    identical to those trained before the losses had one home. Values agree to rounding."""
    for n, classes in ((32, 10), (29, 10), (7, 100)):
        logits = torch.randn(n, classes, generator=generator(n))
        target = torch.randn(n, classes, generator=generator(n + 1))
        labels = torch.randint(0, classes, (n,), generator=generator(n + 2))
        for alpha in (0.1, 0.5, 0.9):
            mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
            value = kd_loss(mine, labels, target, alpha, temperature)
            value.backward()
            reference = lone_kd_formula(theirs, labels, target, alpha, temperature)
            reference.backward()
            assert torch.equal(mine.grad, theirs.grad), (n, classes, alpha)
            assert value.item() == pytest.approx(reference.item(), rel=1e-6)


def scaled_kd(output, labels, target, alpha, temperature, sample_weights=None, *, scale):
    """A loss with a setting, bound by functools.partial as a method's settings are."""
    return scale * kd_loss(output, labels, target, alpha, temperature, sample_weights)


def test_learners_of_different_losses_and_targets_fuse_and_end_as_they_do_alone():
    """One stacked group of learners with the KD loss (teacher, constant uniform and noise
    targets), a loss bound to a setting (functools.partial: two learners' equal partials are
    one function) and plain cross-entropy: each ends as it does alone. A learner whose loss
    cannot fuse trains alone."""
    import functools

    from kdpipe.train import Alone, ConstantLogits, Fused, build_engines

    x, y = toy_data()
    teacher = torch.randn(len(x), 3, generator=generator(5))
    uniform = ConstantLogits(3)
    assert torch.equal(uniform(torch.arange(4), None, 0, 0), torch.zeros(4, 3))

    def learners(fuse=True):
        return [Learner("kd", fresh_mlp(), TeacherLogits(teacher), 0.5, 2.0, order_seed=1),
                Learner("uniform", fresh_mlp(), uniform, 0.3, 1.0, order_seed=1),
                Learner("bound", fresh_mlp(seed=2), TeacherLogits(teacher), 0.9, order_seed=1,
                        loss=functools.partial(scaled_kd, scale=0.5)),
                Learner("rcd", fresh_mlp(), RandomLogits(len(x), 3, seed=9), 0.5, order_seed=2),
                Learner("bound too", fresh_mlp(seed=4), RandomLogits(len(x), 3, seed=8), 0.5,
                        order_seed=1, loss=functools.partial(scaled_kd, scale=0.5), fuse=fuse),
                Learner("ce", fresh_mlp(seed=3), order_seed=3, loss=cross_entropy)]

    recipe = full_recipe(epochs=2, batch_size=16, optimizer="sgd", lr=0.1)
    engines = build_engines(learners(), range(6), recipe, {}, "always")
    assert [type(e) for e in engines] == [Fused]
    assert [g.members for g in engines[0].loss_groups] == [[0, 1, 3], [2, 4], [5]]
    # consecutive members are a slice of the stack, the others an index
    assert engines[0].loss_groups[2].index == slice(5, 6)
    assert torch.equal(engines[0].loss_groups[1].index, torch.tensor([2, 4]))
    engines = build_engines(learners(fuse=False), range(6), recipe, {}, "always")
    assert [type(e) for e in engines] == [Fused, Alone]
    assert_fused_as_alone(learners, x, y, recipe, atol=1e-5, rtol=1e-4)
    # the uniform target is label smoothing: (1 - a) CE + a KL(u || p) = CE with smoothing a,
    # less a log C
    z = torch.randn(6, 3, generator=generator(1))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    smoothed = F.cross_entropy(z, labels, label_smoothing=0.3) - 0.3 * math.log(3)
    got = kd_loss(z, labels, uniform(torch.arange(6), None, 0, 0), 0.3, 1.0)
    assert got.item() == pytest.approx(smoothed.item(), rel=1e-6)
