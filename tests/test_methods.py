"""The method registry (kdpipe/methods.py): what each method is, its losses against independent
computations, a user's method from the config, and that the registry stays the one place that
names a method and stays light to import."""
import ast
import functools
import io
import math
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from kdpipe import methods
from kdpipe.train import generator

REPO = Path(__file__).resolve().parents[1]
# a user's method as the config declares it, filled with the schema's defaults
MINE = {"loss": "mylosses.py:my_kd", "target": "teacher", "uses_alpha": True,
        "uses_temperature": False, "fuse": True}


def test_every_method_is_defined_once_with_its_control_and_comparisons():
    assert methods.ORDER[:7] == ("kd", "rcd", "siddo", "kd-masked", "rcd-masked", "fm", "fm-rcd")
    assert methods.DISTILLED == tuple(m for m in methods.ORDER if m != "siddo")
    for m in methods.REGISTRY:
        assert m.target in methods.TARGETS
        if m.control is not None:
            control = methods.method(m.control)
            # a control replaces the target by noise and keeps everything else
            assert control.uses_noise and not m.uses_noise
            assert (control.loss, control.masked, control.uses_alpha, control.uses_temperature,
                    control.option, control.settings, control.loss_settings) == \
                   (m.loss, m.masked, m.uses_alpha, m.uses_temperature, m.option, m.settings,
                    m.loss_settings)
            names = {name for name, _, _ in m.comparisons}
            assert {f"{m.name}_vs_siddo", f"{m.name}_vs_{m.control}",
                    f"{m.control}_vs_siddo"} <= names
        for name, first, second in m.comparisons:
            assert name == f"{first}_vs_{second}" and {first, second} <= set(methods.ORDER)
        assert set(m.loss_settings) <= set(m.settings)
        if m.settings:
            assert set(m.settings) <= set(methods.SECTIONS[m.option]["properties"])
    assert {"kd", "kd-masked", "fm"} <= set(methods.COMPARISONS_OF)
    assert not methods.method("siddo").uses_alpha and not methods.method("fm").uses_temperature
    assert methods.method("siddo").teacher_free and not methods.method("rcd").teacher_free
    assert methods.method("kd").depends_on_teacher
    assert methods.method("rcd-masked").depends_on_teacher
    assert not methods.method("rcd").depends_on_teacher
    assert methods.CLAIMS[0] == (methods.NOT_BELOW, "kd", "rcd")
    assert methods.BUILT_IN.leads[0] == methods.LEAD == "kd" and methods.CONTROL == "rcd"


def test_methods_enabled_by_the_config():
    assert methods.enabled({}) == ["kd", "rcd", "siddo"]
    assert methods.enabled({"kd_masked": {"enabled": True}, "feature_matching": {}}) == [
        "kd", "rcd", "siddo", "kd-masked", "rcd-masked"]
    assert methods.enabled({"methods": {"mine": MINE}}) == ["kd", "rcd", "siddo", "mine",
                                                            "mine-rcd"]
    with pytest.raises(ValueError, match="unknown method 'kd-typo'"):
        methods.method("kd-typo")


def test_importing_the_registry_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import kdpipe.methods; "
            "print(sorted(m for m in set(sys.modules) - before if not m.startswith('kdpipe')))")
    new = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    heavy = [m for m in eval(new) if m.split(".")[0] in
             ("torch", "numpy", "pandas", "scipy", "matplotlib", "seaborn")]
    assert heavy == []


# --- one home per method -------------------------------------------------------------------------

def string_constants(source: str) -> list[tuple[int, str]]:
    """(line, value) of every string constant of Python or Snakemake source: each whole literal,
    and each constant part of an f-string."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.STRING:
            continue
        node = ast.parse(token.string.strip(), mode="eval").body
        parts = node.values if isinstance(node, ast.JoinedStr) else [node]
        found += [(token.start[0], part.value) for part in parts
                  if isinstance(part, ast.Constant) and isinstance(part.value, str)]
    return found


def test_no_method_is_named_outside_the_registry():
    """The package and the rules branch on a method's entry, never on its name: no registry
    name is a string literal in kdpipe/ (but the registry) or in the workflow."""
    names = set(methods.ORDER)
    files = [p for p in sorted((REPO / "kdpipe").rglob("*.py")) if p.name != "methods.py"]
    files += [REPO / "Snakefile", *sorted((REPO / "workflow").rglob("*.smk"))]
    assert len(files) > 20
    found = [f"{path.relative_to(REPO)}:{line}: {value!r}" for path in files
             for line, value in string_constants(path.read_text()) if value in names]
    assert not found, found


def test_the_literal_finder_sees_literals_and_fstring_parts():
    source = 'a = "kd"\nb = f"{x}_vs_{y}" + f"siddo{z}"\nc = "kd-masked vs kd"\n'
    assert string_constants(source) == [(1, "kd"), (2, "_vs_"), (2, "siddo"),
                                        (3, "kd-masked vs kd")]


# --- the losses against independent computations -------------------------------------------------

def test_kd_loss_matches_the_protocol_formula_by_hand():
    zs = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    zt = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 2])
    alpha, t = 0.3, 2.0
    ps, pt = torch.softmax(zs / t, -1), torch.softmax(zt / t, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean()  # KL(teacher || student), batch mean
    ce = -torch.log_softmax(zs, -1)[torch.arange(2), y].mean()
    expected = (1 - alpha) * ce + alpha * t * t * kl
    assert methods.kd_loss(zs, y, zt, alpha, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kd_loss_at_alpha_zero_is_cross_entropy_and_at_one_pure_kl():
    zs, zt = torch.randn(5, 4, generator=generator(0)), torch.randn(5, 4, generator=generator(1))
    y = torch.tensor([0, 1, 2, 3, 0])
    ce = F.cross_entropy(zs, y).item()
    # a teacher's (or siddo's) gradients are exactly those of torch's cross-entropy, which it
    # always had (tests/test_train.py: and fused, those of the stacked formula); the loss value
    # may differ in its last bit (another summation order)
    for n in (5, 29, 32):
        logits = torch.randn(n, 10, generator=generator(n))
        labels = torch.randint(0, 10, (n,), generator=generator(n + 1))
        mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        value = methods.cross_entropy(mine, labels)
        value.backward()
        F.cross_entropy(theirs, labels).backward()
        assert torch.equal(mine.grad, theirs.grad)
        assert value.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert methods.kd_loss(zs, y, zt, 0.0, 4.0).item() == pytest.approx(ce, rel=1e-6)
    kl = F.kl_div(F.log_softmax(zs, -1), F.softmax(zt, -1), reduction="batchmean")
    assert methods.kd_loss(zs, y, zt, 1.0, 1.0).item() == pytest.approx(kl.item(), rel=1e-6)
    assert methods.kd_loss(zt, y, zt, 1.0, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_every_position_of_a_language_model_is_a_sample():
    zs = torch.randn(2, 5, 4, generator=generator(0))
    zt = torch.randn(2, 5, 4, generator=generator(1))
    y = torch.randint(0, 4, (2, 5), generator=generator(2))
    flat = methods.kd_loss(zs.reshape(10, 4), y.reshape(10), zt.reshape(10, 4), 0.5, 2.0)
    assert methods.kd_loss(zs, y, zt, 0.5, 2.0).item() == pytest.approx(flat.item())


def test_sample_weights_scale_each_samples_kl_term():
    zs = torch.randn(4, 3, generator=generator(0))
    zt = torch.randn(4, 3, generator=generator(1))
    y = torch.tensor([0, 1, 2, 0])
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])
    ce = F.cross_entropy(zs, y)
    per_sample = F.kl_div(F.log_softmax(zs / 2, -1), F.log_softmax(zt / 2, -1), log_target=True,
                          reduction="none").sum(-1)
    expected = 0.5 * ce + 0.5 * 4 * (per_sample * keep).sum() / 4
    got = methods.kd_loss(zs, y, zt, 0.5, 2.0, sample_weights=keep)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_stage_mse_loss_is_cross_entropy_plus_alpha_times_the_mse():
    logits, y = torch.randn(3, 4, generator=generator(0)), torch.tensor([1, 0, 3])
    features, target = torch.randn(3, 2, 5, generator=generator(1)), torch.zeros(3, 2, 5)
    expected = F.cross_entropy(logits, y) + 0.25 * F.mse_loss(features, target)
    got = methods.stage_mse_loss((logits, features), y, target, 0.25)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def lone_and_vmapped(loss, output, labels, target, alphas, temperatures, weights=None):
    """The loss of each slice called alone, and vmapped over the slices (as a fused step does,
    with alpha and T as 0-d tensors)."""
    def part(x, k):
        return tuple(p[k] for p in x) if isinstance(x, tuple) else None if x is None else x[k]

    alone = torch.stack([loss(part(output, k), labels[k], part(target, k), alphas[k],
                              temperatures[k], part(weights, k)) for k in range(len(alphas))])
    in_dims = (0, 0, None if target is None else 0, 0, 0, None if weights is None else 0)
    fused = vmap(loss, in_dims=in_dims)(output, labels, target, torch.tensor(alphas),
                                        torch.tensor(temperatures), weights)
    return alone, fused


def bound_loss(m: methods.Method):
    """A method's loss with its settings at their config defaults, bound as a job binds them."""
    defaults = methods.SECTIONS[m.option]["properties"] if m.option else {}
    return functools.partial(m.loss, **{key: defaults[key]["default"] for key in m.loss_settings})


@pytest.mark.parametrize("name", ["siddo", "kd", "kd-masked", "fm", "ls", "dkd"])
def test_a_loss_vmapped_over_learners_equals_its_lone_calls(name):
    m = methods.method(name)
    g = generator(3)
    logits, y = torch.randn(3, 6, 5, generator=g), torch.randint(0, 5, (3, 6), generator=g)
    target, weights, output = torch.randn(3, 6, 5, generator=g), None, logits
    if m.target == "none":
        target = None
    if m.target == "uniform":
        target = torch.zeros(3, 6, 5)
    if m.masked:
        weights = (torch.arange(18).view(3, 6) % 2).float()
    if m.uses_stage:
        output = (logits, torch.randn(3, 6, 2, generator=g))
        target = torch.randn(3, 6, 2, generator=g)
    alone, fused = lone_and_vmapped(bound_loss(m), output, y, target, [0.1, 0.5, 0.9],
                                    [1.0, 2.0, 4.0], weights)
    torch.testing.assert_close(fused, alone, rtol=1e-6, atol=1e-7)


def test_ls_is_the_kd_loss_towards_the_uniform_distribution_by_hand():
    """z = [ln 2, 0, 0], y = 0: p = [1/2, 1/4, 1/4], CE = ln 2 and KL(u || p) = (1/3) (ln(2/3) +
    2 ln(4/3)); at T = 1 ls is CE with label smoothing alpha (torch's), less alpha ln C."""
    ls = methods.method("ls")
    assert (ls.target, ls.control, ls.uses_alpha, ls.uses_temperature) == ("uniform", None, True,
                                                                         True)
    assert ls.comparisons == (("ls_vs_rcd", "ls", "rcd"), ("ls_vs_siddo", "ls", "siddo"))
    assert ls.claim == (methods.NO_DIFFERENCE, "rcd") and not ls.depends_on_teacher
    z, y, uniform = torch.tensor([[math.log(2), 0.0, 0.0]]), torch.tensor([0]), torch.zeros(1, 3)
    for alpha in (0.1, 0.9):
        by_hand = (1 - alpha) * math.log(2) + alpha * (math.log(2 / 3) + 2 * math.log(4 / 3)) / 3
        assert ls.loss(z, y, uniform, alpha, 1.0).item() == pytest.approx(by_hand, rel=1e-6)
    z = torch.randn(8, 5, generator=generator(0))
    y = torch.randint(0, 5, (8,), generator=generator(1))
    smoothed = F.cross_entropy(z, y, label_smoothing=0.3) - 0.3 * math.log(5)
    assert ls.loss(z, y, torch.zeros(8, 5), 0.3, 1.0).item() == pytest.approx(smoothed.item(),
                                                                               rel=1e-6)
    # at T the KL term is alpha T^2 KL(u || softmax(z / T))
    log_p = torch.log_softmax(z / 2, -1).double()
    kl = (-math.log(5) - log_p).mean(-1).mean() * 1.0
    expected = 0.7 * F.cross_entropy(z, y).double() + 0.3 * 4 * kl
    assert ls.loss(z, y, torch.zeros(8, 5), 0.3, 2.0).item() == pytest.approx(expected.item(),
                                                                              rel=1e-6)
    assert methods.enabled({"ls": {"enabled": True}})[-1] == "ls"


def dkd_by_the_paper(zs, zt, y, alpha, t, a, b):
    """DKD's loss written from the paper in float64, by definitions: the probabilities at T, the
    binary distributions [p(y), 1 - p(y)] (1 - p(y) as the other classes' mass, which float64
    holds where 1 minus a rounded p(y) would be 0), the other classes' distributions
    renormalised, and each KL as sum q log(q / p); the batch mean of (1 - alpha) CE + alpha T^2
    (a TCKD + b NCKD)."""
    zs, zt = zs.double(), zt.double()
    total = 0.0
    for k in range(len(y)):
        ps, pt = torch.softmax(zs[k] / t, -1), torch.softmax(zt[k] / t, -1)
        gt = int(y[k])
        keep = [c for c in range(len(ps)) if c != gt]
        bs = torch.stack([ps[gt], ps[keep].sum()])
        bt = torch.stack([pt[gt], pt[keep].sum()])
        rs, rt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        tckd = (bt * (bt / bs).log()).sum()
        nckd = (rt * (rt / rs).log()).sum()
        ce = -torch.log_softmax(zs[k], -1)[gt]
        total += (1 - alpha) * ce + alpha * t * t * (a * tckd + b * nckd)
    return total / len(y)


def test_dkd_matches_the_papers_formula_and_a_hand_worked_case():
    dkd = methods.method("dkd")
    assert (dkd.target, dkd.control, dkd.settings) == ("teacher", "dkd-rcd",
                                                       ("tckd_weight", "nckd_weight"))
    section = methods.SECTIONS["dkd"]["properties"]
    assert (section["tckd_weight"]["default"], section["nckd_weight"]["default"]) == (1.0, 8.0)
    assert {name for name, _, _ in dkd.comparisons} == {
        "dkd_vs_siddo", "dkd_vs_dkd-rcd", "dkd-rcd_vs_siddo", "dkd_vs_kd"}
    assert methods.enabled({"dkd": {"enabled": True}})[-2:] == ["dkd", "dkd-rcd"]
    g = generator(4)
    zs, zt = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    for alpha, t, a, b in ((0.5, 1.0, 1.0, 8.0), (0.9, 4.0, 1.0, 8.0), (0.3, 2.0, 0.5, 2.0)):
        got = dkd.loss(zs, y, zt, alpha, t, tckd_weight=a, nckd_weight=b)
        assert got.item() == pytest.approx(dkd_by_the_paper(zs, zt, y, alpha, t, a, b).item(),
                                           rel=1e-5)
    # by hand: z_s uniform over 3 classes, p_t = [1/2, 1/4, 1/4], y = 0: the binary
    # distributions are [1/2, 1/2] and [1/3, 2/3], TCKD = (ln(3/2) + ln(3/4)) / 2; the other
    # classes are uniform in both, NCKD = 0; CE = ln 3
    zs, zt, y = torch.zeros(1, 3), torch.tensor([[math.log(2), 0.0, 0.0]]), torch.tensor([0])
    by_hand = 0.5 * math.log(3) + 0.5 * 2.0 * (math.log(1.5) + math.log(0.75)) / 2
    assert dkd.loss(zs, y, zt, 0.5, 1.0, tckd_weight=2.0, nckd_weight=8.0).item() == \
        pytest.approx(by_hand, rel=1e-6)


def test_dkd_decomposes_kd_and_stays_finite_where_a_probability_underflows():
    """The paper's identity KL = TCKD + (1 - p_t(y)) NCKD, per sample; and with the label's
    logit 120 above the others (float32 p(y) = 1, 1 - p(y) = 0), a finite loss and gradient that
    equal the float64 computation of the paper's formula."""
    dkd = methods.method("dkd").loss
    g = generator(5)
    for k in range(4):
        zs, zt = torch.randn(1, 6, generator=g) * 2, torch.randn(1, 6, generator=g) * 2
        y = torch.tensor([k])
        tckd = dkd(zs, y, zt, 1.0, 1.0, tckd_weight=1.0, nckd_weight=0.0)
        nckd = dkd(zs, y, zt, 1.0, 1.0, tckd_weight=0.0, nckd_weight=1.0)
        kl = methods.kd_loss(zs, y, zt, 1.0, 1.0)
        p_true = torch.softmax(zt, -1)[0, k]
        assert kl.item() == pytest.approx((tckd + (1 - p_true) * nckd).item(), rel=1e-5)
    zs = torch.tensor([[120.0, 1.0, -2.0, 0.5]], requires_grad=True)
    zt = torch.tensor([[3.0, 2.5, -1.0, 0.0]])
    y = torch.tensor([0])
    assert torch.softmax(zs, -1)[0, 0].item() == 1.0  # float32 underflow of 1 - p(y)
    loss = dkd(zs, y, zt, 0.9, 1.0, tckd_weight=1.0, nckd_weight=8.0)
    grad, = torch.autograd.grad(loss, zs)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    reference = zs.detach().double().requires_grad_()
    expected = dkd_by_the_paper(reference, zt, y, 0.9, 1.0, 1.0, 8.0)
    expected_grad, = torch.autograd.grad(expected, reference)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


# --- a user's method -----------------------------------------------------------------------------

def test_a_users_method_gets_a_random_control_and_the_standard_comparisons():
    registry = methods.Registry({"mine": MINE})
    mine, control = registry.method("mine"), registry.method("mine-rcd")
    assert registry.order[-2:] == ("mine", "mine-rcd")
    assert (mine.target, control.target) == ("teacher", "noise")
    assert mine.loss == control.loss == "mylosses.py:my_kd" and mine.user_loss
    assert mine.control == "mine-rcd" and not mine.uses_temperature and mine.uses_alpha
    assert registry.comparisons_of["mine"] == (("mine_vs_siddo", "mine", "siddo"),
                                               ("mine_vs_mine-rcd", "mine", "mine-rcd"),
                                               ("mine-rcd_vs_siddo", "mine-rcd", "siddo"))
    assert (methods.NOT_BELOW, "mine", "mine-rcd") in registry.claims
    assert registry.leads[0] == "kd" and registry.leads[-1] == "mine"
    assert "mine" in registry.distilled
    assert "mine" not in methods.ORDER  # the built-in registry is left alone


@pytest.mark.parametrize("defined, key", [({"kd": MINE}, "methods.kd"),
                                          ({"fm": MINE}, "methods.fm"),
                                          ({"mine": MINE, "mine-rcd": MINE}, "methods.mine-rcd")])
def test_a_users_method_may_not_take_a_known_name(defined, key):
    with pytest.raises(methods.MethodError, match="is already defined") as error:
        methods.Registry(defined)
    assert error.value.key == key


def write_loss(folder: Path, body: str, name="mylosses.py") -> Path:
    path = folder / name
    path.write_text(body)
    return path


def test_a_loss_file_is_checked_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = "methods.mine.loss"
    with pytest.raises(methods.MethodError, match=r"loss file 'mylosses.py' not found .*"
                                                  "relative to the working directory"):
        methods.check_loss_file(key, "mylosses.py:my_kd")
    write_loss(tmp_path, "import torch\nraise SystemExit('never run')\ndef my_kd(:\n")
    with pytest.raises(methods.MethodError, match=r"not valid Python: .*\(line 3\)"):
        methods.check_loss_file(key, "mylosses.py:my_kd")
    write_loss(tmp_path, "import torch\nraise SystemExit('never run')\ndef other(): pass\n")
    with pytest.raises(methods.MethodError, match="defines no 'my_kd' at its top level "
                                                  r"\(it defines: other, torch\)") as error:
        methods.check_loss_file(key, "mylosses.py:my_kd")
    assert error.value.key == key and str(error.value).startswith("methods.mine.loss: ")
    for body in ("def my_kd(*args): pass\n", "import functools\nmy_kd = functools.partial(max)\n",
                 "from math import fsum as my_kd\n"):
        write_loss(tmp_path, body)
        methods.check_loss_file(key, "mylosses.py:my_kd")


def test_a_loss_file_is_imported_once_and_its_source_digested(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_loss(tmp_path, "import dataclasses\n@dataclasses.dataclass\nclass A:\n    x: int = 1\n"
                         "def my_kd(*args):\n    return A().x\n")
    loss = methods.load_loss("methods.mine.loss", "mylosses.py:my_kd")
    assert loss() == 1 and methods.load_loss("methods.mine.loss", "mylosses.py:my_kd") is loss
    before = methods.loss_source("mylosses.py:my_kd")
    assert len(before) == 16
    write_loss(tmp_path, "def my_kd(*args):\n    return 2\n")
    assert methods.loss_source("mylosses.py:my_kd") != before
    with pytest.raises(methods.MethodError, match="has no function 'other'"):
        methods.load_loss("methods.mine.loss", "mylosses.py:other")
    write_loss(tmp_path, "import not_a_module_anywhere\n", name="broken.py")
    with pytest.raises(methods.MethodError, match="broken.py' cannot be imported: "
                                                  "ModuleNotFoundError"):
        methods.load_loss("methods.broken.loss", "broken.py:my_kd")


def test_the_config_check_names_the_key_and_the_file(tmp_path, monkeypatch):
    from conftest import TINY
    from kdpipe.config import ConfigError, validate

    monkeypatch.chdir(tmp_path)
    config = {**TINY, "methods": {"mine": {"loss": "mylosses.py:my_kd"}}}
    with pytest.raises(ConfigError, match="config error at methods.mine.loss: loss file "
                                          "'mylosses.py' not found"):
        validate(config)
    write_loss(tmp_path, "def my_kd(*args): pass\n")
    filled = validate(config)
    assert filled["methods"]["mine"] == MINE
    with pytest.raises(ConfigError, match=r"config error at methods.kd: method 'kd' is already "
                                          "defined"):
        validate({**TINY, "methods": {"kd": {"loss": "mylosses.py:my_kd"}}})
    with pytest.raises(ConfigError, match="config error at methods: 'My_KD' does not match"):
        validate({**TINY, "methods": {"My_KD": {"loss": "mylosses.py:my_kd"}}})


# --- a user's method in a study ------------------------------------------------------------------

EXAMPLE = REPO / "docs/examples/reverse_kd.py"  # the worked example of docs/methods.md


@pytest.mark.slow
def test_a_users_method_from_a_file_reaches_every_table_and_retrains_only_itself(tmp_path):
    """docs/methods.md's worked example, declared in the config with its loss file in the
    study's folder: it and its random control train beside kd, rcd and siddo, have rows in
    every table and figures 1-4 and the audit of their own; the loss trains fused as it does
    alone; editing the file retrains its students and no other."""
    import re
    import shutil

    import pandas as pd

    from conftest import snakemake, write_config
    from kdpipe.plan import figure_stems

    shutil.copy(EXAMPLE, tmp_path / "reverse_kd.py")
    defined = {"reverse-kd": {"loss": "reverse_kd.py:reverse_kd", "uses_temperature": True}}
    write_config(tmp_path, widths=[1], seeds=[0, 1, 2], methods=defined,
                 setups={"digits-mlp": {"dataset": "digits", "arch": "mlp",
                                        "recipe": {"epochs": 2, "batch_size": 32}}})
    snakemake(tmp_path)
    results = tmp_path / "results"
    tables = {name: pd.read_parquet(results / f"tables/{name}.parquet")
              for name in ("models", "stats", "claims", "asymmetry", "scaling", "copied_errors")}
    mine = ["reverse-kd", "reverse-kd-rcd"]
    assert tables["models"].groupby("method").size()[mine].tolist() == [3, 3]
    assert {"reverse-kd_vs_siddo", "reverse-kd_vs_reverse-kd-rcd",
            "reverse-kd-rcd_vs_siddo"} <= set(tables["stats"].comparison)
    claims = tables["claims"]
    claim = claims[claims.claim == "reverse-kd-rcd accuracy not significantly below reverse-kd"]
    assert len(claim) == 1 and claim["median_accuracy_reverse-kd"].notna().all()
    for name in ("asymmetry", "scaling", "copied_errors"):
        assert set(mine) <= set(tables[name].method), name
    registry = methods.Registry({"reverse-kd": {**MINE, **defined["reverse-kd"]}})
    stems = figure_stems(["digits-mlp"], [1.0], ["kd", "rcd", "siddo", *mine],
                         registry=registry)
    assert {"fig1_functional-reverse-kd_digits-mlp", "fig1_functional_digits-mlp"} <= set(stems)
    drawn = {p.stem for p in (results / "figures").glob("*.png")}
    assert set(stems) | {"audit_digits-mlp", "audit-reverse-kd_digits-mlp"} == drawn
    # the same students, alone and in the study's fused block, 4 steps: the engine's tolerance
    fused_vs_alone(tmp_path)
    # editing the loss retrains the method's students (and its control's), no other
    edited = EXAMPLE.read_text().replace("alpha * temperature ** 2", "2 * alpha * temperature ** 2")
    assert edited != EXAMPLE.read_text()
    (tmp_path / "reverse_kd.py").write_text(edited)
    logs = results / "logs/train_block"
    for log in logs.glob("*/*/*.log"):
        log.unlink()
    snakemake(tmp_path)
    trained = [int(re.search(r"block of \d+ students: \d+ already finished, training (\d+)",
                             log.read_text()).group(1)) for log in logs.glob("*/*/*.log")]
    assert trained == [6]
    again = pd.read_parquet(results / "tables/models.parquet")
    kept = ~again["method"].isin(mine)
    pd.testing.assert_frame_equal(again[kept], tables["models"][kept])
    assert not again[~kept]["loss"].equals(tables["models"][~kept]["loss"])


def fused_vs_alone(workdir: Path):
    """The user's loss (imported from ``workdir``) trains four learners for 4 SGD steps stacked
    as they train alone, within the fused engine's tolerance (atol 1e-4, rtol 1e-3;
    tests/test_train.py)."""
    import copy

    from conftest import assert_fused_as_alone, full_recipe
    from kdpipe import data as datasets, models
    from kdpipe.train import Learner, RandomLogits, TeacherLogits

    loss = methods.load_loss("methods.reverse-kd.loss", f"{workdir / 'reverse_kd.py'}:reverse_kd")
    dataset = datasets.load(workdir / "results/data/digits.pt", "cpu")
    x, y = dataset.x_train[:64], dataset.y_train[:64]
    teacher = torch.randn(64, 10, generator=generator(1))
    base = models.build("mlp", dataset.input_shape, 10, 0.5)
    models.init_parameters(base, generator(2))

    def learners():
        return [Learner(f"mine {k}", copy.deepcopy(base),
                        TeacherLogits(teacher) if k % 2 == 0 else RandomLogits(64, 10, seed=k),
                        0.5, 1.0 + k, order_seed=k // 2, loss=loss) for k in range(4)]

    recipe = full_recipe(epochs=1, batch_size=16, optimizer="sgd", lr=1e-2, momentum=0.0)
    assert_fused_as_alone(learners, x, y, recipe, atol=1e-4, rtol=1e-3)


def test_a_users_loss_is_imported_and_called_on_one_batch_before_training(tmp_path, monkeypatch):
    """At the start of a block job: a loss that cannot be imported, returns a non-scalar or a
    non-finite value, fails under vmap, or whose file changed since the workflow read it stops
    the job with an error naming the config key and the file."""
    from types import SimpleNamespace

    from kdpipe.jobs import JobError, check_user_loss
    from kdpipe.train import TeacherLogits

    monkeypatch.chdir(tmp_path)
    g = generator(0)
    dataset = SimpleNamespace(x_train=torch.randn(40, 6, generator=g),
                              y_train=torch.randint(0, 3, (40,), generator=g))
    teacher = TeacherLogits(torch.randn(40, 3, generator=g))
    model = torch.nn.Linear(6, 3)
    spec = {"recipe": {"batch_size": 16}}
    bodies = {
        "good": "def f(z, y, t, a, T, w=None):\n    return ((z - t) ** 2).mean() * a\n",
        "vector": "def f(z, y, t, a, T, w=None):\n    return (z - t).sum(-1)\n",
        "nan": "import torch\ndef f(z, y, t, a, T, w=None):\n    return (z * torch.nan).sum()\n",
        "item": "import torch\ndef f(z, y, t, a, T, w=None):\n    return torch.tensor(z.sum().item())\n",
        "broken": "import not_a_module_anywhere\ndef f(*args): pass\n",
    }
    problems = {"vector": r"returned \(16,\) when called on one batch, not a scalar tensor",
                "nan": r"returned nan when called on one batch, not a finite value",
                "item": r"fails when under torch.func.vmap: .*set methods.item.fuse: false",
                "broken": r"loss file 'broken.py' cannot be imported: ModuleNotFoundError"}
    for name, body in bodies.items():
        write_loss(tmp_path, body, name=f"{name}.py")
        m = methods.Registry({name: {**MINE, "loss": f"{name}.py:f"}}).method(name)
        student = {"method": name, "alpha": 0.5, "loss_source": methods.loss_source(m.loss)}
        if name == "good":
            loss = check_user_loss(m, student, spec, model, dataset, teacher)
            assert loss(torch.zeros(2, 3), None, torch.ones(2, 3), 2.0, 1.0).item() == 2.0
            assert model.training  # the check leaves the model as it found it
            with pytest.raises(JobError, match="loss file 'good.py' has changed since the "
                                               "workflow read it"):
                check_user_loss(m, {**student, "loss_source": "0" * 16}, spec, model, dataset,
                                teacher)
            continue
        with pytest.raises(JobError, match=f"config methods.{name}.loss: .*{problems[name]}"):
            check_user_loss(m, student, spec, model, dataset, teacher)
    # a loss declared fuse: false is not called under vmap
    m = methods.Registry({"item": {**MINE, "loss": "item.py:f", "fuse": False}}).method("item")
    check_user_loss(m, {"method": "item", "alpha": 0.5,
                        "loss_source": methods.loss_source(m.loss)}, spec, model, dataset, teacher)
