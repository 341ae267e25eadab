import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from conftest import (C, COPIED_BY_HAND, COPY_ALL, COPY_NONE, LABELS, PARTIAL, PARTIAL_COPIED, STUDENTS,
                      TEACHER, TEACHER_CONFIDENCE, logits_for, write_audit_study)
from kdpipe import audit
from kdpipe.plan import audit_stems

# Hand counts of conftest's TEACHER: 0->1 three times, 2->3 twice, 1->0 and 3->2 once.
EXPECTED_CONFUSION = np.array([[2, 3, 0, 0],
                               [1, 4, 0, 0],
                               [0, 0, 3, 2],
                               [0, 0, 1, 4]])
# (true, predicted, count, mean confidence) in the table's order: count descending, then by pair
EXPECTED_PAIRS = [(0, 1, 3, 0.6), (2, 3, 2, 0.5), (1, 0, 1, 0.8), (3, 2, 1, 0.95)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    return results, write_audit_study(results)


@pytest.fixture(scope="module")
def written(study):
    """make_audit run once on the study, PNG and PDF at 60 dpi."""
    results, _ = study
    paths = audit.make_audit(results / "tables", results, results / "figures", {"dpi": 60}, workers=1)
    return results, paths


def test_confusion_counts_match_the_hand_count():
    matrix = audit.confusion(logits_for(TEACHER, TEACHER_CONFIDENCE), LABELS, C)
    np.testing.assert_array_equal(matrix, EXPECTED_CONFUSION)


def test_confusion_rejects_inconsistent_inputs():
    logits = logits_for(TEACHER, TEACHER_CONFIDENCE)
    with pytest.raises(ValueError, match="num_classes"):
        audit.confusion(logits, LABELS, C + 1)
    with pytest.raises(ValueError, match="outside"):
        audit.confusion(logits, np.where(LABELS == 3, 4, LABELS), C)
    with pytest.raises(ValueError, match="integer labels"):
        audit.confusion(logits, LABELS[:-1], C)


def test_confidence_splits_right_and_wrong_samples():
    on_right, on_wrong = audit.confidence(logits_for(TEACHER, TEACHER_CONFIDENCE), LABELS)
    np.testing.assert_allclose(on_right, np.full(13, 0.9), rtol=1e-6)
    np.testing.assert_allclose(on_wrong, [0.5, 0.6, 0.7, 0.8, 0.4, 0.6, 0.95], rtol=1e-6)


def test_max_probability_does_not_overflow():
    np.testing.assert_allclose(audit.max_probability(np.array([[1000.0, 1000.0, -1000.0]])), [0.5])


def test_teacher_errors_lists_each_confused_pair_most_frequent_first(study):
    results, models = study
    errors = audit.teacher_errors(models, results)
    assert list(errors.columns) == list(audit.ERROR_COLUMNS)
    assert set(errors["setup"]) == {"errant"}  # the perfect teacher has no rows
    pairs = list(zip(errors["true_class"], errors["predicted_class"], errors["count"]))
    assert pairs == [(t, p, n) for t, p, n, _ in EXPECTED_PAIRS]
    np.testing.assert_allclose(errors["mean_confidence"], [c for *_, c in EXPECTED_PAIRS], rtol=1e-6)
    np.testing.assert_allclose(errors["share_of_errors"], [3 / 7, 2 / 7, 1 / 7, 1 / 7])


def test_copied_errors_count_the_copies_per_true_class(study):
    results, models = study
    copied = audit.copied_errors(models, results)
    assert list(copied.columns) == list(audit.COPIED_COLUMNS)
    assert set(copied["setup"]) == {"errant"}  # no teacher errors, nothing to copy
    partial = copied[(copied["method"] == "rcd") & (copied["seed"] == 0)]
    assert partial["true_class"].tolist() == [0, 1, 2, 3]
    assert partial["n_teacher_errors"].tolist() == [3, 1, 2, 1]
    assert partial["copied"].tolist() == PARTIAL_COPIED
    np.testing.assert_allclose(partial["copied_share"], [2 / 3, 1, 1 / 2, 1])


def test_copied_over_classes_is_the_models_tables_incorrect_agreement(study):
    results, models = study
    keys = ["setup", "teacher_id", "method", "alpha", "temperature", "width", "seed"]
    totals = (audit.copied_errors(models, results).groupby(keys, dropna=False)[["copied", "n_teacher_errors"]]
              .sum().reset_index())
    students = models[(models["role"] == "student") & (models["n_teacher_incorrect"] > 0)]
    joined = students.merge(totals, on=keys, how="left", validate="one_to_one")
    assert len(joined) == len(STUDENTS) and joined["copied"].notna().all()
    assert (joined["n_teacher_errors"] == joined["n_teacher_incorrect"]).all()
    assert (joined["copied"] / joined["n_teacher_incorrect"] == joined["incorrect_agreement"]).all()
    assert sorted(joined["copied"]) == [0, 0, 0, 0, 5, 5, 5, 7, 7]


def test_make_audit_writes_the_tables_and_one_figure_per_setup(written, study):
    results, paths = written
    tables, figures = results / "tables", results / "figures"
    assert audit_stems(["errant", "perfect"]) == ["audit_errant", "audit_perfect"]
    assert paths == [tables / "teacher_errors.parquet", tables / "teacher_errors.csv",
                     tables / "copied_errors.parquet", tables / "copied_errors.csv",
                     figures / "audit_errant.png", figures / "audit_errant.pdf",
                     figures / "audit_perfect.png", figures / "audit_perfect.pdf"]
    assert all(path.stat().st_size > 0 for path in paths)
    assert not list(results.rglob("*.tmp"))
    _, models = study
    pd.testing.assert_frame_equal(pd.read_parquet(tables / "teacher_errors.parquet"),
                                  audit.teacher_errors(models, results))
    assert len(pd.read_csv(tables / "copied_errors.csv")) == len(audit.copied_errors(models, results))
    height, width, _ = mpimg.imread(figures / "audit_errant.png").shape
    assert (width, height) == (13 * 60, int(10.5 * 60))


def test_audit_figure_draws_four_panels_with_the_median_copied_shares(study):
    results, models = study
    errors, copied = audit.teacher_errors(models, results), audit.copied_errors(models, results)
    fig = audit.audit_figure("errant", errors, copied, logits_for(TEACHER, TEACHER_CONFIDENCE), LABELS)
    panels = [ax for ax in fig.axes if ax.get_subplotspec() is not None]  # not the colourbar
    assert len(panels) == 4
    confusion_panel, pairs_panel, _, copied_panel = panels
    # the top pair is drawn first (on top) with its count
    assert pairs_panel.get_yticklabels()[0].get_text() == "0 \u2192 1"
    assert pairs_panel.patches[0].get_width() == 3
    # width 1 and the first alpha (0.1): kd is COPY_ALL twice and PARTIAL, rcd PARTIAL and COPY_NONE
    assert "width 1" in copied_panel.get_title() and "alpha = 0.1, T = 1" in copied_panel.get_title()
    bars = {container.get_label().split()[0]: [bar.get_height() for bar in container]
            for container in copied_panel.containers}
    np.testing.assert_allclose(bars["kd"], [1, 1, 1, 1])  # medians, not means
    np.testing.assert_allclose(bars["rcd"], [1 / 3, 1 / 2, 1 / 4, 1 / 2])
    np.testing.assert_allclose(bars["siddo"], [1 / 3, 1 / 2, 1 / 4, 1 / 2])
    # the diagonal of the heatmap is masked: only errors are coloured
    shown = confusion_panel.images[0].get_array()
    assert shown.mask.diagonal().all() and shown.sum() == 7


def test_audit_figure_names_classes_when_given(study):
    results, models = study
    errors, copied = audit.teacher_errors(models, results), audit.copied_errors(models, results)
    names = {"errant": ["cat", "dog", "emu", "fox"]}
    fig = audit.audit_figure("errant", errors, copied, logits_for(TEACHER, TEACHER_CONFIDENCE), LABELS,
                             classes=names)
    pairs_panel = fig.axes[1]
    assert pairs_panel.get_yticklabels()[0].get_text() == "cat \u2192 dog"
    with pytest.raises(ValueError, match="3 class names"):
        audit.audit_figure("errant", errors, copied, logits_for(TEACHER, TEACHER_CONFIDENCE), LABELS,
                           classes={"errant": names["errant"][:3]})


def test_a_teacher_without_errors_gets_a_figure_that_says_so(study):
    results, models = study
    errors, copied = audit.teacher_errors(models, results), audit.copied_errors(models, results)
    fig = audit.audit_figure("perfect", errors, copied, logits_for(LABELS, TEACHER_CONFIDENCE), LABELS)
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert texts.count("no teacher errors") == 2


def test_copied_by_class_counts_the_hand_worked_copies():
    teacher = logits_for(TEACHER, TEACHER_CONFIDENCE)
    for predictions in (COPY_ALL, COPY_NONE, PARTIAL):
        student = logits_for(predictions, np.full(len(LABELS), 0.7))
        assert audit.copied_by_class(student, teacher, LABELS) == COPIED_BY_HAND[id(predictions)]
    # a sequence model's logits [windows, positions, C] count every position as a sample
    student = logits_for(PARTIAL, np.full(len(LABELS), 0.7))
    assert audit.copied_by_class(student.reshape(4, 5, C), teacher.reshape(4, 5, C),
                                 LABELS.reshape(4, 5)) == PARTIAL_COPIED


def audit_tables(results):
    audit.make_audit(results / "tables", results, results / "figures", {"formats": ["png"], "dpi": 30},
                     workers=1)
    return [pd.read_parquet(results / "tables" / f"{name}.parquet") for name in ("teacher_errors", "copied_errors")]


def test_the_audit_reads_no_student_logits(tmp_path):
    """A study copied without its student logits (a laptop) gets the same audit tables."""
    models = write_audit_study(tmp_path)
    with_logits = audit_tables(tmp_path)
    for path in models.loc[models["role"] == "student", "logits_path"]:
        (tmp_path / path).unlink()
    without = audit_tables(tmp_path)
    for table, expected in zip(without, with_logits):
        pd.testing.assert_frame_equal(table, expected)
    assert len(without[1]) == 4 * len(STUDENTS)
    copied = without[1][(without[1]["method"] == "rcd") & (without[1]["seed"] == 0)]
    assert copied["copied"].tolist() == PARTIAL_COPIED


def test_tables_without_the_column_are_counted_from_the_student_logits(tmp_path):
    models = write_audit_study(tmp_path)
    expected = audit_tables(tmp_path)
    models.drop(columns="copied_by_class").to_parquet(tmp_path / "tables" / "models.parquet", index=False)
    for table, reference in zip(audit_tables(tmp_path), expected):
        pd.testing.assert_frame_equal(table, reference)
    first = models[models["role"] == "student"].iloc[0]
    (tmp_path / first["logits_path"]).unlink()
    with pytest.raises(ValueError, match="has no copied_by_class and its logits .* are absent"):
        audit_tables(tmp_path)


def test_figures_rendered_in_parallel_are_the_serial_ones(tmp_path):
    write_audit_study(tmp_path)
    tables = tmp_path / "tables"
    serial = audit.make_audit(tables, tmp_path, tmp_path / "serial", {"dpi": 30}, workers=1)
    parallel = audit.make_audit(tables, tmp_path, tmp_path / "parallel", {"dpi": 30}, workers=2)
    figures = [path for path in serial if path.parent.name == "serial"]
    assert len(figures) == 4
    assert [path.name for path in parallel[4:]] == [path.name for path in figures]
    for path in figures:
        assert (tmp_path / "parallel" / path.name).read_bytes() == path.read_bytes()


def test_copied_by_class_of_another_class_count_is_refused(tmp_path):
    models = write_audit_study(tmp_path)
    models["copied_by_class"] = [None if v is None else [0] * (C + 1) for v in models["copied_by_class"]]
    with pytest.raises(ValueError, match=r"copied_by_class of \[5\] classes, their teacher's logits have 4"):
        audit.copied_errors(models, tmp_path)


def test_the_copied_panel_says_when_siddo_does_not_share_the_teachers_initial_weights(study):
    """fresh_widths: the widths whose students did not start from the teacher's theta0 (every
    width but 1 by default; width 1 too for a teacher given without init or students of another
    architecture); where the panel shows one, its title says siddo controls data order only."""
    results, models = study
    assert audit.fresh_widths(models, "errant/teacher") == {2.0}  # a table without from_theta0
    # as collect writes it: a nullable boolean, empty for teachers
    marked = models.assign(from_theta0=(models.width == 1.0).astype("boolean"))
    marked.loc[marked.role == "teacher", "from_theta0"] = pd.NA
    assert audit.fresh_widths(marked, "errant/teacher") == {2.0}
    assert audit.fresh_widths(marked.assign(from_theta0=False), "errant/teacher") == {1.0, 2.0}
    errors, copied = audit.teacher_errors(models, results), audit.copied_errors(models, results)
    note = "no student starts from the teacher's initial weights: siddo controls data order only"
    for fresh, noted in (({2.0}, False), ({1.0, 2.0}, True)):
        fig = audit.audit_figure("errant", errors, copied, logits_for(TEACHER, TEACHER_CONFIDENCE),
                                 LABELS, fresh_widths=fresh)
        copied_panel = [ax for ax in fig.axes if ax.get_subplotspec() is not None][3]
        assert (note in copied_panel.get_title()) is noted
