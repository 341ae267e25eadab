"""kdpipe compare: the tables of any groups of students from their test logits. On a finished
tiny study it reproduces the study's own statistics and asymmetry rows of a cell; every bad
input stops with a message naming the file or group and the problem."""
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import mannwhitneyu, wilcoxon

import kdpipe
from conftest import ENV, REPO, planned_jobs, snakemake, write_config
from kdpipe.compare import InputError, write_comparison

N, C = 40, 4


def run_compare(workdir, *args):
    """`python -m kdpipe compare ARGS` in ``workdir``, as a user types it; the finished process."""
    return subprocess.run([sys.executable, "-m", "kdpipe", "compare", *map(str, args)],
                          cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)


def toy(seed=0):
    """Teacher logits [N, C] (float32), labels it gets mostly right, and three groups of four
    students, each a noisy copy of the teacher (the rcd group noisier)."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(0.0, 2.0, size=(N, C)).astype(np.float32)
    labels = np.where(rng.random(N) < 0.8, teacher.argmax(axis=1), rng.integers(0, C, N))
    groups = {name: [(teacher + rng.normal(0.0, scale, size=(N, C))).astype(np.float32)
                     for _ in range(4)]
              for name, scale in (("kd", 1.0), ("rcd", 3.0), ("base", 2.0))}
    return teacher, labels, groups


def accuracies(arrays, labels):
    return [float(np.mean(a.argmax(axis=1) == labels)) for a in arrays]


# ---- what compare computes ---------------------------------------------------------------------

def test_every_group_against_the_reference_and_each_pair_in_the_order_given():
    teacher, labels, groups = toy()
    result = kdpipe.compare(teacher, labels, groups, reference="base", metrics=["accuracy"])
    assert result.groups == ("kd", "rcd") and result.reference == "base"
    assert list(result.stats["comparison"].unique()) == ["kd_vs_base", "kd_vs_rcd",
                                                         "rcd_vs_base"]
    stats = result.stats.set_index("comparison")
    accuracy = {name: accuracies(arrays, labels) for name, arrays in groups.items()}
    for comparison, first, second in (("kd_vs_base", "kd", "base"), ("kd_vs_rcd", "kd", "rcd"),
                                      ("rcd_vs_base", "rcd", "base")):
        row = stats.loc[comparison]
        assert row["p"] == pytest.approx(mannwhitneyu(accuracy[first], accuracy[second]).pvalue)
        assert row["median_1"] == pytest.approx(np.median(accuracy[first]))
        # arrays are seeds 0..3 in the order given, so the seeds pair up
        differences = np.subtract(accuracy[first], accuracy[second])
        assert row["n_pairs"] == 4
        if differences.any():
            assert row["p_paired"] == pytest.approx(wilcoxon(differences).pvalue)
    # the cell's columns are left out: compare has one
    assert not {"setup", "teacher_id", "alpha", "temperature", "width"} & set(result.stats)
    models = result.models
    assert list(models["method"]) == [""] + ["kd"] * 4 + ["rcd"] * 4 + ["base"] * 4
    assert models.loc[0, "n_teacher_correct"] == int((teacher.argmax(axis=1) == labels).sum())
    np.testing.assert_allclose(models["ece_gap"].iloc[1:], models["ece"].iloc[1:]
                               - models["ece"].iloc[0], atol=1e-15)
    assert set(result.asymmetry["method"]) == {"kd", "rcd"}
    assert "median_correct_base" in result.asymmetry


def test_seeds_come_from_the_pattern_or_the_sorted_order(tmp_path):
    teacher, labels, groups = toy()
    np.save(tmp_path / "teacher.npy", teacher)
    np.save(tmp_path / "labels.npy", labels)
    for name, arrays in groups.items():
        for seed, array in zip((3, 10, 7, 12), arrays):  # sorted as text: 10, 12, 3, 7
            np.save(tmp_path / f"{name}_seed{seed}.npy", array)
    patterns = {name: str(tmp_path / f"{name}_seed*.npy") for name in groups}
    by_name = kdpipe.compare(tmp_path / "teacher.npy", tmp_path / "labels.npy", patterns,
                             reference="base", seed_pattern=r"seed(\d+)", metrics=["accuracy"])
    kd = by_name.models[by_name.models["method"] == "kd"]
    assert list(kd["seed"]) == [3, 7, 10, 12]
    assert list(kd["logits_path"]) == [str(tmp_path / f"kd_seed{s}.npy") for s in (3, 7, 10, 12)]
    by_order = kdpipe.compare(tmp_path / "teacher.npy", tmp_path / "labels.npy", patterns,
                              reference="base", metrics=["accuracy"])
    kd = by_order.models[by_order.models["method"] == "kd"]
    assert list(kd["seed"]) == [0, 1, 2, 3]
    assert kd["logits_path"].iloc[0].endswith("kd_seed10.npy")


def test_a_torch_file_holding_one_tensor_is_read_as_the_teacher(tmp_path):
    teacher, labels, groups = toy()
    torch.save(torch.from_numpy(teacher), tmp_path / "teacher.pt")
    from_pt = kdpipe.compare(tmp_path / "teacher.pt", labels, groups, reference="base")
    from_array = kdpipe.compare(teacher, labels, groups, reference="base")
    pd.testing.assert_frame_equal(from_pt.stats, from_array.stats)
    assert from_pt.models.loc[0, "logits_path"] == str(tmp_path / "teacher.pt")


def test_write_comparison_writes_the_tables_and_the_three_figures(tmp_path):
    teacher, labels, groups = toy()
    written = write_comparison(kdpipe.compare(teacher, labels, groups, reference="base"),
                               tmp_path / "out", formats=["png"], dpi=30)
    names = sorted(path.name for path in written)
    tables = ["asymmetry", "copied_errors", "models", "stats", "teacher_errors"]
    assert names == sorted([f"{t}.{ext}" for t in tables for ext in ("parquet", "csv")]
                           + ["audit.png", "fig1_functional.png", "fig2_payoff.png"])
    assert all(path.stat().st_size > 0 for path in written)


def test_kdpipe_is_a_console_command():
    """pyproject.toml's [project.scripts] makes `kdpipe` the command line's main()."""
    scripts = re.search(r"^\[project\.scripts\]\n((?:[^\[\n].*\n)*)",
                        (REPO / "pyproject.toml").read_text(), flags=re.M)
    assert scripts and 'kdpipe = "kdpipe.cli:main"' in scripts.group(1).splitlines()
    from kdpipe import cli

    assert callable(cli.main)


# ---- bad input: a message naming the file and the problem ---------------------------------------

@pytest.fixture
def inputs(tmp_path):
    """The toy study as files: teacher.npy, labels.npy, kd/s<seed>.npy, base/s<seed>.npy."""
    teacher, labels, groups = toy()
    np.save(tmp_path / "teacher.npy", teacher)
    np.save(tmp_path / "labels.npy", labels)
    for name in ("kd", "base"):
        (tmp_path / name).mkdir()
        for seed, array in enumerate(groups[name]):
            np.save(tmp_path / name / f"s{seed}.npy", array)
    return tmp_path


def compare_files(folder, teacher="teacher.npy", labels="labels.npy", groups=None,
                  reference="base", seed_pattern=None):
    groups = groups or {"kd": "kd/*.npy", "base": "base/*.npy"}
    return kdpipe.compare(folder / teacher, folder / labels,
                          {name: str(folder / pattern) for name, pattern in groups.items()},
                          reference=reference, seed_pattern=seed_pattern)


def bad_input(folder, message, **changes):
    """compare() on the inputs with ``changes`` raises InputError matching ``message``, in
    which every {folder} stands for the inputs' folder."""
    with pytest.raises(InputError, match=message.format(folder=re.escape(str(folder)))):
        compare_files(folder, **changes)


def test_student_logits_of_another_shape(inputs):
    np.save(inputs / "kd/s2.npy", np.zeros((N - 1, C), np.float32))
    bad_input(inputs, r"{folder}/kd/s2.npy: logits of shape \[39, 4\], but the teacher's are "
                      r"\[40, 4\]")


def test_labels_of_another_length(inputs):
    np.save(inputs / "labels.npy", np.zeros(N + 1, np.int64))
    bad_input(inputs, r"{folder}/labels.npy: expected 40 labels \(one per row of the teacher's "
                      r"logits\), got shape \[41\]")


def test_labels_out_of_range(inputs):
    labels = np.load(inputs / "labels.npy")
    labels[[5, 9]] = [C, -1]
    np.save(inputs / "labels.npy", labels)
    bad_input(inputs, r"{folder}/labels.npy: 2 labels outside \[0, 4\) for the teacher's 4 "
                      r"classes")


def test_labels_that_are_not_integers(inputs):
    np.save(inputs / "labels.npy", np.load(inputs / "labels.npy").astype(np.float64))
    bad_input(inputs, r"{folder}/labels.npy: labels must be integers, got float64")


def test_a_non_finite_value(inputs):
    logits = np.load(inputs / "base/s1.npy")
    logits[7, 2] = np.nan
    np.save(inputs / "base/s1.npy", logits)
    bad_input(inputs, r"{folder}/base/s1.npy: 1 non-finite values \(NaN or infinity\), the "
                      r"first in row 7")


def test_teacher_logits_that_are_not_a_matrix(inputs):
    np.save(inputs / "teacher.npy", np.zeros(N, np.float32))
    bad_input(inputs, r"{folder}/teacher.npy: expected logits of shape \[N, C\]")


def test_a_group_with_one_file(inputs):
    bad_input(inputs, r"group kd: 1 file\(s\) \({folder}/kd/s0.npy\); a Mann-Whitney test "
                      r"needs at least two", groups={"kd": "kd/s0.npy", "base": "base/*.npy"})


def test_a_missing_reference(inputs):
    bad_input(inputs, r"the reference group 'siddo' is not among the groups \(kd, base\)",
              reference="siddo")


def test_a_glob_matching_nothing(inputs):
    bad_input(inputs, r"group kd: the pattern '{folder}/kd/\*.pt' matches no file",
              groups={"kd": "kd/*.pt", "base": "base/*.npy"})


def test_two_files_with_one_seed(inputs):
    np.save(inputs / "kd/run_s1.npy", np.load(inputs / "kd/s1.npy"))
    bad_input(inputs, r"group kd: {folder}/kd/run_s1.npy and {folder}/kd/s1.npy both have seed 1",
              seed_pattern=r"s(\d+)\.npy")


def test_a_seed_pattern_without_one_group_or_without_a_match(inputs):
    bad_input(inputs, r"seed pattern 's\\d\+' has 0 groups; it needs exactly one",
              seed_pattern=r"s\d+")
    bad_input(inputs, r"group kd: the seed pattern 'seed\(\\d\+\)' does not capture a whole "
                      r"number in {folder}/kd/s0.npy", seed_pattern=r"seed(\d+)")


def test_a_level_or_bin_count_out_of_range():
    teacher, labels, groups = toy()
    with pytest.raises(InputError, match="the level must lie between 0 and 1, got 5"):
        kdpipe.compare(teacher, labels, groups, reference="base", level=5)
    with pytest.raises(InputError, match="confidence bins must be an integer >= 1, got 0"):
        kdpipe.compare(teacher, labels, groups, reference="base", ece_bins=0)


@pytest.mark.parametrize("second, message", [
    ("base=nothing/*.npy", "group base: the pattern 'nothing/*.npy' matches no file"),
    ("kd=base/*.npy", "group 'kd' is given twice; give each group once"),
])
def test_the_command_says_what_is_wrong_and_exits_1(inputs, second, message):
    result = run_compare(inputs, "--teacher", "teacher.npy", "--labels", "labels.npy",
                         "--group", "kd=kd/*.npy", "--group", second,
                         "--reference", "base", "--out", "out")
    assert result.returncode == 1
    assert f"kdpipe compare: error: {message}" in result.stderr
    assert not (inputs / "out").exists()


# ---- on a finished study: its own rows, reproduced -----------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny finished study with 4 seeds, so that its tests can reject (p_min 2/70)."""
    workdir = tmp_path_factory.mktemp("compare_study")
    write_config(workdir, widths=[1], seeds=[0, 1, 2, 3])
    snakemake(workdir)
    return workdir


CELL = "results/digits-mlp/teacher/{method}/{run}_s*/logits.npy"
TEACHER = "results/digits-mlp/teacher/logits.npy"
LABELS = "results/data/digits.labels.npy"


def study_rows(workdir, name, **cell):
    table = pd.read_parquet(workdir / f"results/tables/{name}.parquet")
    for column, value in cell.items():
        table = table[table[column] == value]
    return table


def assert_numbers_match(ours, theirs, key):
    """Every numeric column the two tables share, row by row on ``key``, within 1e-12."""
    ours, theirs = ours.set_index(key), theirs.set_index(key).loc[ours.set_index(key).index]
    numeric = pd.api.types.is_numeric_dtype
    shared = [c for c in ours.columns if c in theirs.columns and numeric(ours[c])
              and not pd.api.types.is_bool_dtype(ours[c])]
    assert len(shared) >= 9, shared
    for column in shared:
        np.testing.assert_allclose(ours[column].to_numpy(dtype=float),
                                   theirs[column].to_numpy(dtype=float), rtol=0, atol=1e-12,
                                   err_msg=column)
    return shared


@pytest.mark.slow
def test_compare_reproduces_the_studys_rows_of_a_cell(study):
    result = run_compare(study, "--teacher", TEACHER, "--labels", LABELS,
                         "--group", "kd=" + CELL.format(method="kd", run="a0.5_T1_w1"),
                         "--group", "siddo=" + CELL.format(method="siddo", run="w1"),
                         "--reference", "siddo", "--seed-pattern", r"_s(\d+)/",
                         "--out", "compared", "--formats", "png")
    assert result.returncode == 0, result.stderr
    assert "kd_vs_siddo: two-sided Mann-Whitney, level 0.05" in result.stdout
    out = study / "compared"
    cell = {"setup": "digits-mlp", "alpha": 0.5, "temperature": 1.0, "width": 1.0}
    stats = pd.read_parquet(out / "stats.parquet")
    theirs = study_rows(study, "stats", comparison="kd_vs_siddo", **cell)
    assert len(stats) == len(theirs) == 9
    shared = assert_numbers_match(stats, theirs, "metric")
    assert {"p", "p_paired", "effect_size", "p_min"} <= set(shared)
    assert stats["testable"].all()  # 4 against 4 seeds: verdicts exist
    assert list(stats.set_index("metric")["significant"]) == list(
        theirs.set_index("metric").loc[stats["metric"], "significant"])
    payoff = pd.read_parquet(out / "asymmetry.parquet")
    assert_numbers_match(payoff, study_rows(study, "asymmetry", **cell), "method")
    models = pd.read_parquet(out / "models.parquet")
    students = models[models["role"] == "student"].assign(
        seed=lambda t: t["seed"].astype("int64"))
    study_models = study_rows(study, "models", setup="digits-mlp", width=1.0)
    study_models = study_models[(study_models["method"] == "siddo")
                                | ((study_models["method"] == "kd")
                                   & (study_models["alpha"] == 0.5))]
    shared = assert_numbers_match(students, study_models, ["method", "seed"])
    assert {"ece", "ece_gap", "accuracy", "incorrect_agreement"} <= set(shared)
    for name in ("fig1_functional.png", "fig2_payoff.png", "audit.png", "copied_errors.csv"):
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_the_function_with_a_third_group_reproduces_all_three_comparisons(study):
    groups = {method: sorted(study.glob(CELL.format(method=method, run=run)))
              for method, run in (("kd", "a0.5_T1_w1"), ("rcd", "a0.5_T1_w1"),
                                  ("siddo", "w1"))}
    result = kdpipe.compare(study / TEACHER, study / LABELS, groups, reference="siddo",
                            seed_pattern=r"_s(\d+)/")
    cell = {"setup": "digits-mlp", "alpha": 0.5, "temperature": 1.0, "width": 1.0}
    theirs = study_rows(study, "stats", **cell)
    assert_numbers_match(result.stats, theirs, ["comparison", "metric"])
    assert len(result.stats) == len(theirs) == 3 * 9


@pytest.mark.slow
def test_a_new_ece_bin_count_reruns_collect_and_what_follows_never_training(study, tmp_path):
    config = write_config(tmp_path, widths=[1], seeds=[0, 1, 2, 3], stats={"ece_bins": 10})
    assert planned_jobs(study, config=config) == {"collect": 1, "statistics": 1, "figures": 1,
                                                  "audit": 1, "all": 1}
