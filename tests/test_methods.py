"""The method registry (kdpipe/methods.py): what each method is, and that it stays light."""
import subprocess
import sys

from kdpipe import methods


def test_every_method_is_defined_once_with_its_control_and_comparisons():
    assert methods.ORDER == ("kd", "rcd", "siddo", "kd-masked", "rcd-masked", "fm", "fm-rcd")
    assert methods.DISTILLED == tuple(m for m in methods.ORDER if m != "siddo")
    for m in methods.REGISTRY:
        if m.control is not None:
            control = methods.method(m.control)
            # a control replaces the teacher by noise and keeps everything else
            assert control.uses_noise and m.uses_teacher
            assert (control.loss, control.masked, control.uses_temperature, control.option) == \
                   (m.loss, m.masked, m.uses_temperature, m.option)
            names = {name for name, _, _ in m.comparisons}
            assert {f"{m.name}_vs_siddo", f"{m.name}_vs_{m.control}",
                    f"{m.control}_vs_siddo"} <= names
        for name, first, second in m.comparisons:
            assert name == f"{first}_vs_{second}" and {first, second} <= set(methods.ORDER)
    assert set(methods.COMPARISONS_OF) == {"kd", "kd-masked", "fm"}
    assert not methods.method("siddo").uses_alpha and not methods.method("fm").uses_temperature


def test_methods_enabled_by_the_config():
    assert methods.enabled({}) == ["kd", "rcd", "siddo"]
    assert methods.enabled({"kd_masked": {"enabled": True}, "feature_matching": {}}) == [
        "kd", "rcd", "siddo", "kd-masked", "rcd-masked"]
    try:
        methods.method("kd-typo")
    except ValueError as error:
        assert "unknown method 'kd-typo'" in str(error)
    else:
        raise AssertionError("an unknown method was accepted")


def test_importing_the_registry_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import kdpipe.methods; "
            "print(sorted(m for m in set(sys.modules) - before if not m.startswith('kdpipe')))")
    new = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    heavy = [m for m in eval(new) if m.split(".")[0] in
             ("torch", "numpy", "pandas", "scipy", "matplotlib", "seaborn")]
    assert heavy == []
