"""One training loop for teachers and students. Methods differ only in their target.

A ``Learner`` is a model with its distillation target: ``None`` for plain cross-entropy
(teachers, ``siddo``), the teacher's cached train logits (``kd``) or noise logits (``rcd``).
``train`` steps any number of learners on identical batches, so a job's ``kd`` and ``rcd``
students share one data pass: one batch gather, one backward over the summed losses (their
graphs are disjoint, so each model gets exactly its own gradient) and one optimizer step.

Data lives on the device as tensors; a batch is an index into them. Every random stream is an
explicit ``torch.Generator`` derived from named seeds, re-derived every epoch, so that a run
resumed at an epoch boundary continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from kdpipe.augment import augment


def seed_for(*parts) -> int:
    """A 63-bit seed from named parts, e.g. ``seed_for("order", "student", 3)``."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class Recipe:
    """How a model is trained. ``lr`` is the peak learning rate; ``schedule`` is ``constant``
    or ``cosine`` (per step, to zero at the end); ``augment`` names a batch augmentation of
    ``kdpipe.augment`` applied on the device, with ``augment_options``; ``stop_at_train_loss``
    ends training after the first epoch whose mean training-batch loss is at most that value
    (a teacher trained to a target train loss)."""
    epochs: int
    batch_size: int
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    eval_batch_size: int = 1024
    augment: str = "none"
    augment_options: dict = field(default_factory=dict)
    stop_at_train_loss: float | None = None


class TeacherLogits:
    """The teacher's logits on the (un-augmented) train set, computed once by the teacher job."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, index, inputs, epoch: int, step: int) -> torch.Tensor:
        return self.logits[index]


class TeacherModel:
    """The teacher run on every batch: with augmentation the cached logits no longer match the
    inputs the student sees."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, index, inputs, epoch: int, step: int) -> torch.Tensor:
        return self.model(inputs)


class RandomLogits:
    """Noise logits for random-control distillation (rcd), ``shape`` per sample: (C,), or
    (L, C) for a language model.

    ``distribution``: ``uniform`` (U[0, 1)) or ``gaussian`` (N(0, 1)). ``resample``: ``step``
    draws afresh for every sample at every step; ``fixed`` draws one vector per training sample
    for the whole run. Draws come from generators seeded by ``seed`` (and the epoch).
    """

    def __init__(self, num_samples: int, shape, seed: int, distribution="uniform",
                 resample="step", device="cpu"):
        if distribution not in ("uniform", "gaussian"):
            raise ValueError(f"rcd distribution must be uniform or gaussian, got {distribution!r}")
        if resample not in ("step", "fixed"):
            raise ValueError(f"rcd resample must be step or fixed, got {resample!r}")
        self.draw = torch.rand if distribution == "uniform" else torch.randn
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.seed, self.device = seed, device
        self.fixed = None
        if resample == "fixed":
            self.fixed = self.draw(num_samples, *self.shape, generator=generator(seed, device),
                                   device=device)
        self.epoch, self.stream = None, None

    def __call__(self, index, inputs, epoch: int, step: int) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed[index]
        if epoch != self.epoch:
            self.epoch, self.stream = epoch, generator(seed_for(self.seed, epoch), self.device)
        return self.draw(len(index), *self.shape, generator=self.stream, device=self.device)


class DownweightedClasses:
    """A target whose distribution, at temperature T, has the mass on every class other than the
    sample's true one multiplied by ``weight`` and renormalised (kd-masked's class variant):
    softmax(z / T) * w_c, normalised, is softmax(z / T + log w_c), i.e. logits z + T log w_c.
    A weight of 0 is taken as 1e-30, leaving the true class alone without a 0 * log 0."""

    def __init__(self, target, labels: torch.Tensor, weight: float, temperature: float,
                 num_classes: int):
        self.target, self.labels, self.num_classes = target, labels, num_classes
        self.offset = temperature * math.log(max(weight, 1e-30))

    def __call__(self, index, inputs, epoch: int, step: int) -> torch.Tensor:
        logits = self.target(index, inputs, epoch, step)
        true = F.one_hot(self.labels[index], self.num_classes).to(logits.dtype)
        return logits + self.offset * (1 - true)


def distillation_loss(student_logits, labels, target_logits, alpha: float, temperature: float,
                      sample_weights=None):
    """(1 - alpha) CE(y, z_s) + alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)), batch mean.

    Logits [..., C] with labels [...]: for a language model every position is a sample.
    ``sample_weights`` [...] scale each sample's KL term (the batch mean still divides by the
    batch size): kd-masked gives the samples its teacher gets wrong weight 0.
    """
    classes = student_logits.shape[-1]
    student_logits, labels = student_logits.reshape(-1, classes), labels.reshape(-1)
    if target_logits is not None:
        target_logits = target_logits.reshape(-1, classes)
    log_p = F.log_softmax(student_logits, dim=-1)
    ce = F.nll_loss(log_p, labels)
    if target_logits is None:
        return ce
    t = temperature
    if t != 1:  # at T = 1 the CE's log-probabilities serve the KL term as well
        log_p, target_logits = F.log_softmax(student_logits / t, dim=-1), target_logits / t
    log_q = F.log_softmax(target_logits, dim=-1)
    if sample_weights is None:
        kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    else:
        per_sample = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
        kl = (per_sample * sample_weights.reshape(-1)).mean()
    return (1 - alpha) * ce + alpha * t * t * kl


def feature_matching_loss(student_logits, labels, student_features, target_features, alpha: float):
    """CE(y, z_s) + alpha MSE(student stage output, target of that shape): FitNets-style matching
    of a named stage (fm), or of noise of the same shape (its random control fm-rcd)."""
    ce = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))
    return ce + alpha * F.mse_loss(student_features, target_features)


def staged_forward(model, stage: str, x, stop: bool = False):
    """Run a model of named stages; return (output of ``stage``, logits), or with ``stop`` only
    the stage's output."""
    features = None
    for name, module in model.named_children():
        x = module(x)
        if name == stage:
            if stop:
                return x
            features = x
    if features is None:
        stages = ", ".join(name for name, _ in model.named_children())
        raise ValueError(f"the model has no stage {stage!r}; its stages: {stages}")
    return features, x


class TeacherFeatures:
    """The teacher's output of one stage on every (possibly augmented) batch, for fm."""

    def __init__(self, model: torch.nn.Module, stage: str):
        self.model, self.stage = model.eval(), stage

    @torch.no_grad()
    def __call__(self, index, inputs, epoch: int, step: int) -> torch.Tensor:
        return staged_forward(self.model, self.stage, inputs, stop=True)


@dataclass
class FeatureMatch:
    """What an fm or fm-rcd learner matches: the output of ``stage``, mapped by ``adapter`` (a
    1x1 convolution or linear map, trained with the student, where the student's width gives
    that stage another size than the teacher's; None where the sizes agree)."""
    stage: str
    adapter: torch.nn.Module | None = None

    def adapt(self, features):
        return features if self.adapter is None else self.adapter(features)


@dataclass
class Learner:
    """A model and what it learns from: ``target=None`` is plain cross-entropy;
    ``sample_weights`` (one per training sample, or per position) weight the distillation term."""
    name: str
    model: torch.nn.Module
    target: object = None
    alpha: float = 0.0
    temperature: float = 1.0
    sample_weights: torch.Tensor | None = None
    feature_match: FeatureMatch | None = None
    history: list = field(default_factory=list)

    def modules(self) -> list:
        """The modules trained: the model, and an fm adapter where there is one."""
        adapter = self.feature_match.adapter if self.feature_match else None
        return [self.model] + ([adapter] if adapter is not None else [])


def make_optimizer(parameters, recipe: Recipe):
    # fused: one kernel for all parameters of every learner, 2-3x faster than the default loop
    if recipe.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                fused=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                 fused=True)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0,
                               fused=True)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; known: adam, adamw, sgd")


def learning_rate(recipe: Recipe, step: int, total_steps: int) -> float:
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "cosine":
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * step / total_steps))
    raise ValueError(f"unknown schedule {recipe.schedule!r}; known: constant, cosine")


@dataclass(frozen=True)
class Checkpoint:
    """Where and how often ``train`` saves its state; ``key`` names the run (a checkpoint with
    another key, left by a run with other settings, is ignored)."""
    path: Path
    every: int
    key: str


def train(learners: list, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, order_seed: int,
          log=None, checkpoint: Checkpoint | None = None) -> float:
    """Train ``learners`` together on batches of (x, y) in the order drawn from ``order_seed``.

    Returns the seconds spent. ``log(epoch, learners)`` is called after every epoch; each
    learner's ``history`` gets {"epoch", "loss", "accuracy"} of its training batches. With a
    ``checkpoint``, the state is saved every ``checkpoint.every`` epochs and a run finding a
    checkpoint of its own resumes from it, ending exactly as an uninterrupted run would.
    """
    start = time.perf_counter()
    models = [module for learner in learners for module in learner.modules()]
    optimizer = make_optimizer([p for m in models for p in m.parameters()], recipe)
    n = len(x)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    first_epoch = resume(checkpoint, learners, optimizer, x.device)
    if first_epoch and log is not None:
        print(f"resumed from {checkpoint.path} after epoch {first_epoch}", file=sys.stderr)
    for model in models:
        model.train()
    step = first_epoch * steps_per_epoch
    for epoch in range(first_epoch, recipe.epochs):
        order = torch.randperm(n, generator=generator(seed_for(order_seed, epoch), x.device),
                               device=x.device)
        augment_stream = generator(seed_for(order_seed, "augment", epoch), x.device)
        loss_sums = torch.zeros(len(learners), device=x.device)
        correct = torch.zeros(len(learners), device=x.device, dtype=torch.long)
        for i in range(steps_per_epoch):
            index = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            xb, yb = x[index], y[index]
            if recipe.augment != "none":
                xb = augment(recipe.augment, xb, augment_stream, **recipe.augment_options)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, step, total_steps)
            total = 0
            for k, learner in enumerate(learners):
                target = None if learner.target is None else learner.target(index, xb, epoch, i)
                if learner.feature_match is None:
                    logits = learner.model(xb)
                    weights = None if learner.sample_weights is None else learner.sample_weights[index]
                    loss = distillation_loss(logits, yb, target, learner.alpha, learner.temperature,
                                             weights)
                else:
                    features, logits = staged_forward(learner.model, learner.feature_match.stage, xb)
                    loss = feature_matching_loss(logits, yb, learner.feature_match.adapt(features),
                                                 target, learner.alpha)
                total = total + loss
                loss_sums[k] += loss.detach() * len(index)
                correct[k] += (logits.detach().argmax(-1) == yb).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            step += 1
        for k, learner in enumerate(learners):
            learner.history.append({"epoch": epoch + 1, "loss": loss_sums[k].item() / n,
                                    "accuracy": correct[k].item() / y.numel()})
        if log is not None:
            log(epoch + 1, learners)
        if recipe.stop_at_train_loss is not None and all(
                learner.history[-1]["loss"] <= recipe.stop_at_train_loss for learner in learners):
            break
        if checkpoint and (epoch + 1) % checkpoint.every == 0 and epoch + 1 < recipe.epochs:
            save_checkpoint(checkpoint, learners, optimizer, epoch + 1)
    return time.perf_counter() - start


def save_checkpoint(checkpoint: Checkpoint, learners: list, optimizer, epochs_done: int) -> None:
    from kdpipe.io import atomic_path

    state = {"key": checkpoint.key, "epochs_done": epochs_done,
             "optimizer": optimizer.state_dict(),
             "models": [[m.state_dict() for m in learner.modules()] for learner in learners],
             "histories": [learner.history for learner in learners]}
    with atomic_path(checkpoint.path) as tmp:
        torch.save(state, tmp)


def resume(checkpoint: Checkpoint | None, learners: list, optimizer, device) -> int:
    """Load a matching checkpoint into the learners and optimizer; return the epochs done."""
    if checkpoint is None or not Path(checkpoint.path).exists():
        return 0
    state = torch.load(checkpoint.path, map_location=device, weights_only=True)
    if state["key"] != checkpoint.key or len(state["models"]) != len(learners):
        return 0
    optimizer.load_state_dict(state["optimizer"])
    for learner, states, history in zip(learners, state["models"], state["histories"]):
        for module, weights in zip(learner.modules(), states):
            module.load_state_dict(weights)
        learner.history[:] = history
    return state["epochs_done"]


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The model's logits on ``x`` in eval mode, batch by batch."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


class EpochLog:
    """Per-epoch lines to stderr; on a terminal, one line redrawn as a progress bar instead."""

    def __init__(self, label: str, epochs: int, stream=None):
        self.label, self.epochs = label, epochs
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()

    def __call__(self, epoch: int, learners: list) -> None:
        parts = "  ".join(f"{l.name}: loss {l.history[-1]['loss']:.4f} acc {l.history[-1]['accuracy']:.3f}"
                          for l in learners)
        if self.interactive:
            done = round(20 * epoch / self.epochs)
            end = "\n" if epoch == self.epochs else ""
            self.stream.write(f"\r{self.label} [{'#' * done}{'.' * (20 - done)}] "
                              f"{epoch}/{self.epochs}  {parts}{end}")
        else:
            self.stream.write(f"{self.label} epoch {epoch}/{self.epochs}  {parts}\n")
        self.stream.flush()
