"""Architectures: shapes, named stages, width scaling, generator-driven init, causality."""
import pytest
import torch

from kdpipe import models
from kdpipe.train import generator

torch.set_num_threads(1)

# arch -> (input_shape, num_classes, stages after ``stem``), small enough for CPU tests
CASES = {
    "mlp": ((1, 8, 8), 10, 2),
    "cnn": ((3, 32, 32), 10, 2),
    "resnet18": ((3, 32, 32), 10, 4),
    "vgg19": ((3, 32, 32), 10, 5),
    "vit": ((3, 32, 32), 10, 6),
    "m5": ((1, 16000), 35, 3),
    "logmel_cnn": ((1, 40, 101), 35, 4),
    "char_lstm": ((64,), 65, 2),
    "char_gpt": ((64,), 65, 6),
}
SEQUENCE_MODELS = ("char_lstm", "char_gpt")


def test_cases_cover_every_architecture():
    # the parametrised tests below run over CASES: an architecture without a case is untested
    assert sorted(CASES) == sorted(models.ARCHS)


def batch(arch, size=2, seed=0):
    input_shape, num_classes, _ = CASES[arch]
    g = generator(seed)
    if arch in SEQUENCE_MODELS:
        return torch.randint(0, num_classes, (size,) + input_shape, generator=g)
    return torch.randn((size,) + input_shape, generator=g)


def fresh(arch, width=0.25, seed=0):
    input_shape, num_classes, _ = CASES[arch]
    model = models.build(arch, input_shape, num_classes, width)
    models.init_parameters(model, generator(seed))
    return model


@pytest.mark.parametrize("arch", CASES)
def test_forward_shape_and_named_stages(arch):
    input_shape, num_classes, stages = CASES[arch]
    model = fresh(arch)
    with torch.no_grad():
        logits = model(batch(arch))
    expected = (2, input_shape[0], num_classes) if arch in SEQUENCE_MODELS else (2, num_classes)
    assert logits.shape == expected and torch.isfinite(logits).all()
    names = [name for name, _ in model.named_children()]
    body = [f"stage{k}" for k in range(1, stages + 1)] + ["head"]
    assert names in (body, ["stem"] + body)


def test_resnet_stage4_is_the_last_residual_stage_at_4x4():
    model = fresh("resnet18")
    with torch.no_grad():
        features = model[:-1](batch("resnet18"))  # everything before the head
    assert features.shape == (2, models.scaled(512, 0.25), 4, 4)
    assert model[-2] is model.stage4


@pytest.mark.parametrize("arch", CASES)
def test_parameter_count_grows_with_width(arch):
    input_shape, num_classes, _ = CASES[arch]
    counts = [models.parameter_count(arch, input_shape, num_classes, w) for w in (0.25, 0.5, 1, 2)]
    assert counts == sorted(set(counts))
    model = models.build(arch, input_shape, num_classes, 0.5)
    assert counts[1] == sum(p.numel() for p in model.parameters())


def test_parameter_count_by_hand():
    # hidden 4, vocab 5: embedding 5 * 4; per LSTM layer 4 gates * 4 * (4 inputs + 4 recurrent)
    # weights plus two biases of 4 * 4; head 4 * 5 weights + 5 biases
    by_hand = 5 * 4 + 2 * (4 * 4 * (4 + 4) + 2 * 4 * 4) + 4 * 5 + 5
    assert models.parameter_count("char_lstm", (8,), 5, width=4 / 512) == by_hand == 365
    # ResNet-18 on CIFAR-10 has the well-known 11,173,962 parameters (kuangliu/pytorch-cifar)
    assert models.parameter_count("resnet18", (3, 32, 32), 10) == 11_173_962


@pytest.mark.parametrize("dim_width", [0.3, 0.7, 1.3])
def test_transformer_widths_keep_dim_divisible_by_heads(dim_width):
    for arch, heads in (("vit", 8), ("char_gpt", 6)):
        model = models.build(arch, *CASES[arch][:2], dim_width)
        dim = model.head[0].normalized_shape[0]
        assert dim % heads == 0 and model.stage1.attention.heads == heads


@pytest.mark.parametrize("arch", CASES)
def test_init_depends_on_the_generator_alone(arch):
    input_shape, num_classes, _ = CASES[arch]

    def initialised(global_seed, seed):
        torch.manual_seed(global_seed)  # disturbs construction-time init; must not matter
        model = models.build(arch, input_shape, num_classes, 0.25)
        models.init_parameters(model, generator(seed))
        return dict(model.named_parameters())

    first, again, other = initialised(1, 0), initialised(2, 0), initialised(3, 1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    random_ones = [name for name, p in first.items() if p.unique().numel() > 1]
    assert random_ones and all(not torch.equal(first[n], other[n]) for n in random_ones)


@pytest.mark.parametrize("arch", SEQUENCE_MODELS)
def test_language_models_are_causal(arch):
    model = fresh(arch)
    tokens = batch(arch)
    t = 20
    changed = tokens.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % CASES[arch][1]
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :t + 1], before[:, :t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(after[:, t + 1:], before[:, t + 1:])


def test_gpt_refuses_sequences_longer_than_its_block():
    model = fresh("char_gpt")
    with pytest.raises(ValueError, match="block size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_unknown_architecture_and_bad_width_are_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        models.build("resnet19", (3, 32, 32), 10, 1.0)
    with pytest.raises(ValueError, match="width"):
        models.build("vit", (3, 32, 32), 10, 0.0)
