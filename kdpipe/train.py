"""One training loop for teachers and students. Methods differ only in their target and loss.

A ``Learner`` is a model with its target, a callable ``(index, inputs, epoch, step) -> Tensor``
(None for plain cross-entropy: teachers, siddo; the teacher's cached train logits, noise logits,
a constant distribution, a stage's output), its loss (a function of kdpipe.methods' losses'
signature) and its own data order (``order_seed``). ``train`` steps any number of learners in one
process; learners sharing an order seed see identical batches (one gather, one augmentation
draw). The engine knows no method: kdpipe.jobs builds each learner from its method's entry.

Data lives on the device as tensors; a batch is an index into them. Every random stream is an
explicit ``torch.Generator`` derived from named seeds, re-derived every epoch, so that a run
resumed at an epoch boundary continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from kdpipe.augment import augment
from kdpipe.methods import cross_entropy, kd_loss, stage_mse_loss


def seed_for(*parts) -> int:
    """A 63-bit seed from named parts, e.g. ``seed_for("order", "student", 3)``."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class Recipe:
    """How a model is trained, every field given: the config schema's recipe
    (workflow/schemas/config.schema.yaml) documents each and holds their defaults, and
    ``kdpipe.config.recipe`` fills them. ``lr`` is the peak learning rate; ``schedule`` is
    ``constant`` or ``cosine`` (per step, to zero at the end); ``augment`` names a batch
    augmentation of ``kdpipe.augment`` applied on the device, with ``augment_options``;
    ``stop_at_train_loss`` (None: never) ends a learner's training after the first epoch whose
    mean training-batch loss is at most that value (a teacher trained to a target train loss);
    ``precision`` is ``fp32``, ``tf32`` or ``bf16`` (``precision_context``; parameters and
    optimizer state stay fp32)."""
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    eval_batch_size: int
    augment: str
    augment_options: dict
    stop_at_train_loss: float | None
    precision: str


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


class ConstantLogits:
    """The same logits for every sample: all zeros are the uniform distribution at any T (label
    smoothing's target). ``shape`` per sample, as RandomLogits'."""

    def __init__(self, shape, device="cpu"):
        self.logits = torch.zeros((shape,) if isinstance(shape, int) else tuple(shape),
                                  device=device)

    def __call__(self, index, inputs, epoch: int, step: int) -> torch.Tensor:
        return self.logits.expand(len(index), *self.logits.shape)


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


class TrainingDiverged(RuntimeError):
    """A learner's mean training loss over an epoch is not finite (NaN or infinite): its logits
    are no longer a model's output and must never be scored."""


@dataclass
class Learner:
    """A model and what it learns from: ``target`` is a callable ``(index, inputs, epoch, step)
    -> Tensor`` giving a batch's target (None: no target), and ``loss(output, labels, target,
    alpha, temperature, sample_weights)`` the batch's loss (the model's logits as output, or with
    ``feature_match`` (logits, the matched stage's output)); ``sample_weights`` (one per training
    sample, or per position) weight the distillation term. ``order_seed`` draws the learner's
    batch order and augmentation; learners with one ``order_seed`` see identical batches.
    ``fuse`` False: the loss does not work under vmap, and the learner trains alone. Without a
    ``loss`` (kdpipe.jobs always gives one), a learner learns by cross-entropy without a target,
    by kdpipe.methods.stage_mse_loss with ``feature_match``, else by kdpipe.methods.kd_loss."""
    name: str
    model: torch.nn.Module
    target: object = None
    alpha: float = 0.0
    temperature: float = 1.0
    sample_weights: torch.Tensor | None = None
    feature_match: FeatureMatch | None = None
    history: list = field(default_factory=list)
    order_seed: int = field(kw_only=True)
    loss: object = field(default=None, kw_only=True)
    fuse: bool = field(default=True, kw_only=True)

    def __post_init__(self):
        if self.loss is None:
            self.loss = (cross_entropy if self.target is None else
                         stage_mse_loss if self.feature_match is not None else kd_loss)

    def modules(self) -> list:
        """The modules trained: the model, and an fm adapter where there is one."""
        adapter = self.feature_match.adapter if self.feature_match else None
        return [self.model] + ([adapter] if adapter is not None else [])

    def parameters(self) -> list:
        return [p for m in self.modules() for p in m.parameters()]


class Optimizer:
    """The recipe's optimizer (Adam, AdamW or SGD with Nesterov momentum) over ``parameters``,
    run by torch.optim's functional form with its fused kernel (one kernel for all parameters,
    2-3x faster than the default loop). Not a ``torch.optim.Optimizer``: its methods import
    torch._dynamo on first use, 2-3 s of every training job. ``state`` holds, per parameter,
    the entries a ``torch.optim`` optimizer would (``step``, ``exp_avg``, ``exp_avg_sq``;
    ``momentum_buffer``)."""

    def __init__(self, parameters: list, recipe: Recipe):
        if recipe.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"unknown optimizer {recipe.optimizer!r}; known: adam, adamw, sgd")
        self.parameters, self.recipe = parameters, recipe
        self.state = {}

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        recipe = self.recipe
        params = [p for p in self.parameters if p.grad is not None]
        grads = [p.grad for p in params]
        if recipe.optimizer == "sgd":
            buffers = [self.state.get(p, {}).get("momentum_buffer")
                       for p in params] if recipe.momentum else []
            sgd(params, grads, buffers, fused=True, weight_decay=recipe.weight_decay,
                momentum=recipe.momentum, lr=lr, dampening=0.0, nesterov=recipe.momentum > 0,
                maximize=False)
            if recipe.momentum:
                for p, buffer in zip(params, buffers):
                    self.state[p] = {"momentum_buffer": buffer}
            return
        for p in params:
            if p not in self.state:
                self.state[p] = {"step": torch.zeros((), device=p.device),
                                 "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        states = [self.state[p] for p in params]
        adam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
             [], [s["step"] for s in states], fused=True,
             decoupled_weight_decay=recipe.optimizer == "adamw", amsgrad=False, beta1=0.9,
             beta2=0.999, lr=lr, weight_decay=recipe.weight_decay, eps=1e-8, maximize=False)


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

    @property
    def damaged(self) -> Path:
        """Where an unreadable checkpoint is set aside, until its job finishes."""
        return Path(self.path).with_name(Path(self.path).name + ".damaged")


def logits_of(output):
    """The logits of a learner's output: the output, or its first part with feature matching."""
    return output[0] if isinstance(output, tuple) else output


class Alone:
    """One learner stepped by itself: its own modules and optimizer."""

    def __init__(self, learner: Learner, recipe: Recipe, optimizer_state=None):
        self.learners, self.recipe = [learner], recipe
        # the model's output, or with feature matching (logits, stage output): its Trainee
        self.forward = learner.model if learner.feature_match is None else Trainee(learner)
        self.parameters = learner.parameters()
        self.optimizer = Optimizer(self.parameters, recipe)
        for p, state in zip(self.parameters, optimizer_state or ()):
            if state:
                self.optimizer.state[p] = {k: v.clone() for k, v in state.items()}
        # channels-last convolutions: cuDNN's fast layout (tensor cores) on CUDA
        self.channels_last = (self.parameters[0].device.type == "cuda" and any(
            isinstance(m, torch.nn.Conv2d) for m in learner.model.modules()))
        for module in learner.modules():
            module.train()
            if self.channels_last:
                module.to(memory_format=torch.channels_last)

    def step(self, batches: dict, epoch: int, step: int, lr: float):
        """Step on the learner's batch; return its loss and correct predictions, shape [1]."""
        learner = self.learners[0]
        index, xb, yb = batches[learner.order_seed]
        if self.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(self.recipe.precision, yb.device):
            target = None if learner.target is None else learner.target(index, xb, epoch, step)
            output = self.forward(xb)
            weights = None if learner.sample_weights is None else learner.sample_weights[index]
            loss = learner.loss(output, yb, target, learner.alpha, learner.temperature, weights)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step(lr)
        right = (logits_of(output).detach().argmax(-1) == yb).sum()
        return loss.detach().float()[None], right[None]

    def optimizer_states(self) -> list:
        """Per learner: its parameters' optimizer states, in ``Learner.parameters`` order."""
        return [[dict(self.optimizer.state.get(p, {})) for p in self.parameters]]

    def write_back(self) -> None:
        """The learner's modules are the ones trained: nothing to copy."""


class Trainee(torch.nn.Module):
    """A learner's modules as one: its model and fm adapter. Returns the logits, or with
    feature matching (logits, the matched stage's output mapped by the adapter)."""

    def __init__(self, learner: Learner):
        super().__init__()
        fm = learner.feature_match
        self.model, self.stage = learner.model, None if fm is None else fm.stage
        self.adapter = None if fm is None else fm.adapter

    def forward(self, x):
        if self.stage is None:
            return self.model(x)
        features, logits = staged_forward(self.model, self.stage, x)
        return logits, features if self.adapter is None else self.adapter(features)


# vmap runs CPU flash attention model by model (no batching rule yet); measured still faster
# fused than alone for the ViT and GPT, so the warning of every job would only be noise.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet "
                        "implemented the batching rule for aten::_scaled_dot_product")

# Modules that vmap cannot batch (no batching rule for aten::lstm: it would run model by model
# and break cuDNN); learners holding one train alone.
UNFUSABLE = (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN)


@dataclass(frozen=True)
class FuseLimits:
    """What ``fuse="auto"`` stacks on one device type: groups of at least ``min_learners``
    learners of at most ``max_parameters`` parameters each, holding no module of ``unfused``."""
    max_parameters: int
    min_learners: int
    unfused: tuple = ()


# Measured per device type (docs/engine.md, "Fusion"; benchmarks/RESULTS.md); on a device
# type not listed (MPS), fuse="auto" trains every learner alone. Stacking pays where a learner's
# step is fixed cost (launches, per-operation overhead) that enough learners share; it loses where
# a step is arithmetic, which the stacked kernels (batched matmul, grouped convolution) do no
# faster.
# CPU (benchmarks/bench_training.py 4c-4d, digits, one thread, noise about 10 %): 3 students of
# at most 100k parameters ran 0.92-1.29x the speed of one after another, 4 or more 0.97-2.2x,
# 2 lost (0.72-1.05x); the MLP at width 2 (301k) gained at most 1.2x even 28 at a time; stacked
# 1-d convolutions lost even for the small M5 (38k parameters: 0.85x).
# CUDA (an H200, benchmarks/bench_device.py and digits students, deterministic algorithms):
# ResNet-18 at 0.18-0.70M parameters ran 2.1-3.3x at 8, 0.97x at 3, 0.78x at 2; at 2.8M 0.55x at
# 2 and 1.01x at 8 (fp32); at 11M 0.59-0.96x in fp32 and tf32; digits students (85-260k) 1.5-2.0x
# at 3, 3.1-4.9x at 8, 6-13x at 28, 9-23x at 84, and 0.9-1.1x at 2.
AUTO_FUSE = {"cpu": FuseLimits(100_000, 3, (torch.nn.Conv1d,)),
             "cuda": FuseLimits(1_000_000, 3)}


def fusion_key(learner: Learner, fuse: str = "auto"):
    """Learners with equal keys may train as one stacked computation; None: train alone (a
    recurrent model, or a learner whose loss does not work under vmap). ``fuse``: ``auto`` (the
    device type's ``AUTO_FUSE`` limits; ``build_engines`` applies the group size), ``always``
    (every fusable learner), ``never``."""
    if fuse not in ("auto", "always", "never"):
        raise ValueError(f"fuse must be auto, always or never, got {fuse!r}")
    modules = [m for module in learner.modules() for m in module.modules()]
    parameters = learner.parameters()
    if fuse == "never" or not learner.fuse or any(isinstance(m, UNFUSABLE) for m in modules):
        return None
    if fuse == "auto":
        limits = AUTO_FUSE.get(parameters[0].device.type)
        if (limits is None or sum(p.numel() for p in parameters) > limits.max_parameters
                or any(isinstance(m, limits.unfused) for m in modules)):
            return None
    fm = learner.feature_match
    return (tuple(type(m).__name__ for m in modules),
            tuple((name, tuple(t.shape), t.dtype) for module in learner.modules()
                  for name, t in module.state_dict().items()),
            None if fm is None else (fm.stage, fm.adapter is not None))


def loss_key(loss):
    """What makes two learners' losses one function for a stacked step: the function, and for a
    ``functools.partial`` its bound arguments (dkd's weights, say)."""
    if isinstance(loss, functools.partial):
        return (loss.func, loss.args, tuple(sorted(loss.keywords.items())))
    return loss


@dataclass
class LossGroup:
    """The learners of a stacked step that share a loss function (and having a target or not):
    their positions in the stack (``index``; a slice where they are consecutive), the loss
    vmapped over their slices, and their alphas and temperatures [k]."""
    members: list
    index: object
    loss: object
    alpha: torch.Tensor
    temperature: torch.Tensor


class Fused:
    """K learners of one structure stepped as one computation: their parameters and buffers
    stacked along a new first dimension (``torch.func.stack_module_state``), the model run on
    the K batches at once by ``vmap`` over ``functional_call``, each learner's loss function
    vmapped over the slices of the learners that share it (``group_losses``: the function a lone
    learner calls, no second copy), one backward of the summed losses (each slice gets exactly
    its own learner's gradient) and one optimizer step. Adam, AdamW and SGD are elementwise, so
    every slice keeps its own optimizer state."""

    def __init__(self, learners: list, recipe: Recipe, optimizer_states: list):
        from torch.func import functional_call, stack_module_state, vmap

        self.learners, self.recipe = learners, recipe
        self.trainees = [Trainee(learner).train() for learner in learners]
        params, self.buffers = stack_module_state(self.trainees)
        # vmap's batched matmul gives a stacked linear weight [K, out, in] its gradient in the
        # transposed layout, which autograd would copy into the weight's layout at every step
        # (a quarter of a fused MLP's step). Kept as [K, in, out] and used through a transposing
        # view, the weight takes its gradient as it comes.
        self.transposed = {f"{name}.weight" for name, m in self.trainees[0].named_modules()
                           if isinstance(m, torch.nn.Linear)}
        self.params = {name: (p.detach().mT.contiguous().requires_grad_()
                              if name in self.transposed else p)
                       for name, p in params.items()}
        skeleton = copy.deepcopy(self.trainees[0]).to("meta")

        def run(params, buffers, x):
            return functional_call(skeleton, (params, buffers), (x,))

        self.run_shared = vmap(run, in_dims=(0, 0, None))  # one batch for all: no stacking
        self.run_each = vmap(run, in_dims=(0, 0, 0))
        stacked = list(self.params.values())
        self.optimizer = Optimizer(stacked, recipe)
        for j, (name, p) in enumerate(self.params.items()):
            states = [s[j] for s in optimizer_states if s is not None and s[j]]
            if len(states) == len(learners):
                self.optimizer.state[p] = {
                    key: self.stored(name, torch.stack([s[key] for s in states]))
                    if per_slice(v, self.natural(name, p)) else v.clone()
                    for key, v in states[0].items()}
        self.device = device = stacked[0].device
        self.alpha = torch.tensor([l.alpha if l.target is not None else 0.0 for l in learners],
                                  device=device)
        self.temperature = torch.tensor([l.temperature for l in learners], device=device)
        self.loss_groups = self.group_losses(learners, vmap)
        if recipe.precision == "bf16":
            # vmap's batch norm wants its input in the running statistics' dtype (on CUDA a bf16
            # input failed against float32 statistics): normalise in float32
            for module in skeleton.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.register_forward_pre_hook(lambda _, args: (args[0].float(),))

    def group_losses(self, learners: list, vmap) -> list:
        """The learners grouped by loss function (``loss_key``) and by having a target: each
        group's loss is its function vmapped over the group's slices of the stack, so that one
        function serves a learner trained alone and fused (kdpipe.methods' losses)."""
        groups = {}
        for k, learner in enumerate(learners):
            groups.setdefault((loss_key(learner.loss), learner.target is None), []).append(k)
        found = []
        for (_, no_target), members in groups.items():
            consecutive = members == list(range(members[0], members[-1] + 1))
            index = (slice(members[0], members[-1] + 1) if consecutive
                     else torch.tensor(members, device=self.device))
            weighted = any(learners[k].sample_weights is not None for k in members)
            in_dims = (0, 0, None if no_target else 0, 0, 0, 0 if weighted else None)
            found.append(LossGroup(members, index,
                                   vmap(learners[members[0]].loss, in_dims=in_dims),
                                   self.alpha[index], self.temperature[index]))
        return found

    def attention_kernels(self):
        """On CUDA, attention without the memory-efficient kernel: with the learners folded into
        its batch by vmap, that kernel's backward rejected its own logsumexp's strides (ViT on an
        H200, torch 2.11). Flash attention (bf16) or the plain computation instead."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])

    def step(self, batches: dict, epoch: int, step: int, lr: float):
        """Step every learner on its batch; return their losses and correct predictions, [K]."""
        picked = [batches[learner.order_seed] for learner in self.learners]
        shared = all(b is picked[0] for b in picked)
        y = torch.stack([yb for _, _, yb in picked])
        with autocast(self.recipe.precision, y.device), self.attention_kernels():
            targets = [None if l.target is None else l.target(index, xb, epoch, step)
                       for l, (index, xb, _) in zip(self.learners, picked)]
            weights = {name: self.natural(name, p) for name, p in self.params.items()}
            if shared:
                out = self.run_shared(weights, self.buffers, picked[0][1])
            else:
                out = self.run_each(weights, self.buffers, torch.stack([b[1] for b in picked]))
            parts = [self.group_loss(group, out, y, targets, picked)
                     for group in self.loss_groups]
        self.optimizer.zero_grad()
        sum(part.sum() for part in parts).backward()
        self.optimizer.step(lr)
        losses = parts[0].detach().float()
        if len(parts) > 1:
            losses = torch.empty(len(self.learners), device=y.device)
            for group, part in zip(self.loss_groups, parts):
                losses[group.index] = part.detach().float()
        right = (logits_of(out).detach().argmax(-1) == y).flatten(1).sum(1)
        return losses, right

    def group_loss(self, group: LossGroup, out, y, targets: list, picked: list):
        """The losses [k] of one loss group's learners, from the stacked output."""
        members, index = group.members, group.index
        if len(members) < len(self.learners):  # else the whole stack, as it is
            out = tuple(o[index] for o in out) if isinstance(out, tuple) else out[index]
            y = y[index]
        target = None
        if targets[members[0]] is not None:
            target = torch.stack([targets[k] for k in members])
        weights = None
        if any(self.learners[k].sample_weights is not None for k in members):
            weights = torch.stack([
                torch.ones(picked[k][2].shape, device=y.device)
                if self.learners[k].sample_weights is None
                else self.learners[k].sample_weights[picked[k][0]] for k in members])
        return group.loss(out, y, target, group.alpha, group.temperature, weights)

    def stored(self, name: str, stacked):
        """A stacked parameter (or its optimizer state) in the layout it is kept in."""
        return stacked.mT.contiguous() if name in self.transposed else stacked

    def natural(self, name: str, kept):
        """A kept parameter (or its optimizer state) as the stacked module's shape: a view."""
        return kept.mT if name in self.transposed else kept

    def optimizer_states(self) -> list:
        """Per learner: its parameters' optimizer states, in ``Learner.parameters`` order."""
        states = [[] for _ in self.learners]
        for name, p in self.params.items():
            state = {key: self.natural(name, v) if v.shape == p.shape else v
                     for key, v in self.optimizer.state.get(p, {}).items()}
            shape = self.natural(name, p).shape
            for k, learner_states in enumerate(states):
                learner_states.append({key: (v[k] if v.shape == shape else v).clone(
                    memory_format=torch.contiguous_format) for key, v in state.items()})
        return states

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each slice of the stacked state into its learner's own modules."""
        for k, trainee in enumerate(self.trainees):
            for name, p in trainee.named_parameters():
                p.copy_(self.natural(name, self.params[name])[k])
            for name, b in trainee.named_buffers():
                b.copy_(self.buffers[name][k])


def per_slice(value, stacked) -> bool:
    """Whether one learner's optimizer state entry is one of the stacked parameter's slices
    (moments, momentum), not shared by all (Adam's step count)."""
    return value.dim() > 0 and value.shape == stacked.shape[1:]


PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def precision_context(precision: str, device):
    """The float32 arithmetic of a recipe's ``precision`` (``train`` runs in it; the steps add
    ``autocast``). ``fp32``: IEEE float32 (torch's own default lets cuDNN convolutions use TF32
    on CUDA, which would make fp32 results depend on the device); ``tf32``: CUDA matmuls and
    convolutions take TF32 inputs (10-bit mantissa, float32 sums); ``bf16``: IEEE float32
    outside the autocast region. On a CPU, tf32 is fp32. Evaluation (``predict``,
    ``jobs.evaluate``) runs in fp32: the logits every metric is computed from do not depend on
    the training precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    backends = ((torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
                if device.type == "cuda" else ())
    before = [b.fp32_precision for b in backends]
    for b in backends:
        b.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        yield
    finally:
        for b, value in zip(backends, before):
            b.fp32_precision = value


def autocast(precision: str, device):
    """A step's forward pass and loss: bf16 autocast for ``precision: bf16`` (parameters,
    gradients and optimizer state stay float32); otherwise nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build_engines(learners: list, live: list, recipe: Recipe, states: dict,
                  fuse: str = "auto") -> list:
    """Engines stepping the ``live`` learners (indices), each given its optimizer state: one
    ``Fused`` per group of learners of one structure (two or more; with ``fuse="auto"``, the
    device type's ``AUTO_FUSE`` minimum), ``Alone`` for the rest."""
    groups = {}
    for k in live:
        key = fusion_key(learners[k], fuse)
        groups.setdefault(k if key is None else key, []).append(k)
    engines = []
    for members in groups.values():
        device = learners[members[0]].parameters()[0].device.type
        smallest = AUTO_FUSE[device].min_learners if fuse == "auto" and device in AUTO_FUSE else 2
        if len(members) >= smallest:
            engines.append(Fused([learners[k] for k in members], recipe,
                                 [states.get(k) for k in members]))
        else:
            engines.extend(Alone(learners[k], recipe, states.get(k)) for k in members)
    return engines


def engine_states(engines: list) -> dict:
    """Write every engine's state back into its learners' modules; return the optimizer states
    by learner (by identity)."""
    states = {}
    for engine in engines:
        engine.write_back()
        for learner, state in zip(engine.learners, engine.optimizer_states()):
            states[id(learner)] = state
    return states


def train(learners: list, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, log=None,
          checkpoint: Checkpoint | None = None, fuse: str = "auto") -> float:
    """Train ``learners`` on batches of (x, y), each in the order drawn from its ``order_seed``.

    Returns the seconds spent. ``log(epoch, learners)`` is called after every epoch; each
    learner's ``history`` gets {"epoch", "loss", "accuracy"} of its training batches. With
    ``recipe.stop_at_train_loss``, a learner stops (keeps its state, gets no more history) after
    the first epoch whose mean batch loss is at most that; the others go on. A non-finite epoch
    loss raises ``TrainingDiverged``. With a ``checkpoint``, the state is saved every
    ``checkpoint.every`` epochs and a run finding a checkpoint of its own resumes from it,
    ending exactly as an uninterrupted run would; an unreadable one is set aside.

    Learners of one structure (model and fm adapter) are stepped as one stacked computation
    (``Fused``) where ``fuse`` allows (``fusion_key``); the others one after another, each by
    itself (``Alone``). Each learner's result is its own either way, to float rounding: summing
    in another order, a fused learner ends within ~1e-6 (relative) of its lone run after a few
    steps, a difference that training may amplify as any rounding difference. A fused
    learner's own modules are brought up to date at every checkpoint, when it stops and when
    ``train`` returns (not after every step: ``log`` should read ``history``, not the models).
    """
    start = time.perf_counter()
    n = len(x)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    with precision_context(recipe.precision, x.device):
        first_epoch, live, states = resume(checkpoint, learners, x.device)
        if first_epoch and log is not None:
            print(f"resumed from {checkpoint.path} after epoch {first_epoch}", file=sys.stderr)
        engines = build_engines(learners, live, recipe, states, fuse)
        step = first_epoch * steps_per_epoch
        for epoch in range(first_epoch, recipe.epochs):
            if not engines:
                break
            seeds = list(dict.fromkeys(l.order_seed for e in engines for l in e.learners))
            orders = {s: torch.randperm(n, generator=generator(seed_for(s, epoch), x.device),
                                        device=x.device) for s in seeds}
            streams = {s: generator(seed_for(s, "augment", epoch), x.device) for s in seeds}
            loss_sums = [torch.zeros(len(e.learners), device=x.device) for e in engines]
            corrects = [torch.zeros(len(e.learners), device=x.device, dtype=torch.long)
                        for e in engines]
            for i in range(steps_per_epoch):
                lr = learning_rate(recipe, step, total_steps)
                batches = {}
                for s in seeds:
                    index = orders[s][i * recipe.batch_size:(i + 1) * recipe.batch_size]
                    xb = x[index]
                    if recipe.augment != "none":
                        xb = augment(recipe.augment, xb, streams[s], **recipe.augment_options)
                    batches[s] = (index, xb, y[index])
                for engine, loss_sum, correct in zip(engines, loss_sums, corrects):
                    losses, right = engine.step(batches, epoch, i, lr)
                    loss_sum += losses * len(index)
                    correct += right
                step += 1
            for engine, loss_sum, correct in zip(engines, loss_sums, corrects):
                for learner, loss, right in zip(engine.learners, loss_sum.tolist(),
                                                correct.tolist()):
                    learner.history.append({"epoch": epoch + 1, "loss": loss / n,
                                            "accuracy": right / y.numel()})
                    if not math.isfinite(loss):
                        raise TrainingDiverged(
                            f"training diverged: learner {learner.name!r} had a mean training "
                            f"loss of {loss / n} in epoch {epoch + 1}; lower the learning rate "
                            f"(recipe.lr = {recipe.lr})")
            if log is not None:
                log(epoch + 1, learners)
            if recipe.stop_at_train_loss is not None:
                done = [k for k in live
                        if learners[k].history[-1]["loss"] <= recipe.stop_at_train_loss]
                if done:
                    states = engine_states(engines)
                    live = [k for k in live if k not in done]
                    engines = build_engines(learners, live, recipe,
                                            {k: states[id(learners[k])] for k in live}, fuse)
            if checkpoint and (epoch + 1) % checkpoint.every == 0 and epoch + 1 < recipe.epochs \
                    and engines:
                save_checkpoint(checkpoint, learners, engines, live, epoch + 1)
        for engine in engines:
            engine.write_back()
    return time.perf_counter() - start


def save_checkpoint(checkpoint: Checkpoint, learners: list, engines: list, live: list,
                    epochs_done: int) -> None:
    from kdpipe.io import atomic_path

    states = engine_states(engines)
    state = {"key": checkpoint.key, "epochs_done": epochs_done,
             "learners": [{"modules": [m.state_dict() for m in learner.modules()],
                           "optimizer": states.get(id(learner)), "history": learner.history,
                           "live": k in live} for k, learner in enumerate(learners)]}
    with atomic_path(checkpoint.path) as tmp:
        torch.save(state, tmp)


def resume(checkpoint: Checkpoint | None, learners: list, device):
    """Load a matching checkpoint into the learners. Return the epochs done, the indices of the
    learners still training and their optimizer states by index. A checkpoint that cannot be
    read is renamed with a ``.damaged`` suffix (kept for inspection until the job finishes) and
    training starts over."""
    fresh = 0, list(range(len(learners))), {}
    if checkpoint is None or not Path(checkpoint.path).exists():
        return fresh
    path = Path(checkpoint.path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated or corrupt: whatever torch.load raises
        damaged = checkpoint.damaged
        path.replace(damaged)
        print(f"warning: checkpoint {path} cannot be read ({str(error).strip()}); moved it to "
              f"{damaged}, training starts over", file=sys.stderr)
        return fresh
    if (not isinstance(state, dict) or state.get("key") != checkpoint.key
            or len(state.get("learners", ())) != len(learners)):
        return fresh
    live, states = [], {}
    for k, (learner, saved) in enumerate(zip(learners, state["learners"])):
        for module, weights in zip(learner.modules(), saved["modules"]):
            module.load_state_dict(weights)
        learner.history[:] = saved["history"]
        if saved["live"]:
            live.append(k)
            states[k] = saved["optimizer"]
    return state["epochs_done"], live, states


def predict_batches(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024):
    """Yield the model's logits on ``x``, ``batch_size`` inputs at a time, in eval mode, without
    gradients and in fp32: the one way kdpipe runs a model to score it. Batch by batch, so that
    a caller reducing each batch (``kdpipe.jobs.evaluate``) never holds every logit."""
    model.eval()
    with torch.no_grad(), precision_context("fp32", x.device):
        for i in range(0, len(x), batch_size):
            yield model(x[i:i + batch_size])


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The model's logits on ``x`` (``predict_batches``, concatenated)."""
    return torch.cat(list(predict_batches(model, x, batch_size)))


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
