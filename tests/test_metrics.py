import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import logsumexp
from scipy.special import softmax as scipy_softmax
from scipy.stats import kendalltau

from kdpipe.metrics import (
    accuracy,
    activation_distance,
    agreement_split,
    cross_entropy,
    expected_calibration_error,
    js_divergence,
    prediction_agreement,
    rank_disagreement,
    softmax,
    student_metrics,
)

LOG3 = math.log(3.0)


def test_softmax_hand_case_and_large_logits():
    expected = np.array([[0.25, 0.75], [0.5, 0.5]])
    np.testing.assert_allclose(softmax([[0.0, LOG3], [2.0, 2.0]]), expected)
    # exp(1000) overflows: only a shifted softmax gets this right
    np.testing.assert_allclose(softmax([[1000.0, 1000.0 + LOG3], [-1000.0, -1000.0]]), expected)


def test_softmax_is_float64_and_gives_exact_zeros():
    p = softmax(np.array([[0.0, -np.inf, 1.0], [0.0, -1e4, 0.0]], dtype=np.float32))
    assert p.dtype == np.float64
    assert p[0, 1] == 0.0 and p[1, 1] == 0.0
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_accuracy_hand_case():
    logits = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]]
    assert accuracy(logits, np.array([0, 1, 0, 2])) == 0.5


def test_cross_entropy_hand_case():
    logits = [[0.0, LOG3], [0.0, LOG3]]  # p = (1/4, 3/4)
    expected = -(math.log(0.75) + math.log(0.25)) / 2
    assert cross_entropy(logits, np.array([1, 0])) == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_is_stable_for_large_logits():
    # log-softmax of (1000, 0) at class 1 is -1000 exactly; softmax then log would give inf
    assert cross_entropy([[1000.0, 0.0]], np.array([1])) == pytest.approx(1000.0)
    assert cross_entropy([[1000.0, 0.0]], np.array([0])) == pytest.approx(0.0, abs=1e-300)


def test_labels_must_be_integers_of_matching_length():
    with pytest.raises(ValueError):
        accuracy([[0.0, 1.0]], np.array([1.0]))
    with pytest.raises(ValueError):
        cross_entropy([[0.0, 1.0]], np.array([1, 0]))


def test_activation_distance_hand_case():
    p = [[1.0, 0.0], [0.5, 0.5]]
    q = [[0.0, 1.0], [0.5, 0.5]]
    assert activation_distance(p, q) == pytest.approx(math.sqrt(2) / 2)


def jsd_scipy(student_logits, teacher_logits) -> float:
    """The mean squared scipy Jensen-Shannon distance, natural log: an independent JSD."""
    p, q = (np.exp(logsumexp_rows(z)) for z in (student_logits, teacher_logits))
    return float(np.mean([jensenshannon(a, b, base=math.e) ** 2 for a, b in zip(p, q)]))


def logsumexp_rows(z):
    """log-softmax by scipy, independent of kdpipe.metrics."""
    z = np.asarray(z, dtype=np.float64)
    return z - logsumexp(z, axis=1, keepdims=True)


def test_js_divergence_matches_scipy():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(50, 7)), rng.normal(size=(50, 7)) * 3
    assert js_divergence(student, teacher) == pytest.approx(jsd_scipy(student, teacher), rel=1e-10)


def test_js_divergence_hand_cases():
    # disjoint supports: the maximum, log 2; identical rows: exactly 0
    assert js_divergence([[0.0, -np.inf]], [[-np.inf, 0.0]]) == pytest.approx(math.log(2))
    assert js_divergence([[0.0, 2.0]], [[1.0, 3.0]]) == 0.0
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4):
    # JSD = 1/2 log(4/3) + 1/2 (1/2 log(2/3) + 1/2 log 2)
    expected = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert js_divergence([[0.0, -np.inf]], [[0.0, 0.0]]) == pytest.approx(expected, rel=1e-12)


def test_js_divergence_with_zero_probability_classes():
    student = [[0.0, -np.inf, 1.0, -1e4], [-1e4, 2.0, 0.0, -np.inf]]
    teacher = [[-np.inf, 0.0, 1.0, 0.5], [-1e4, -1e4, 0.0, 1.0]]
    assert (softmax(student) == 0).sum() == 4 and (softmax(teacher) == 0).sum() == 3
    value = js_divergence(student, teacher)
    assert np.isfinite(value)
    assert value == pytest.approx(jsd_scipy(student, teacher), rel=1e-10)


def test_js_divergence_is_finite_for_large_logit_gaps():
    # p = (1, 5e-324), q = (1, 0): the mixture's 2.5e-324 underflows to 0, and p / m was inf
    student, teacher = [[0.0, -744.4], [0.0, 800.0]], [[0.0, -2000.0], [800.0, 0.0]]
    value = js_divergence(student, teacher)
    assert value == pytest.approx(math.log(2) / 2, rel=1e-12)  # second row: disjoint, log 2


def test_prediction_agreement_hand_case():
    student = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    teacher = [[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]]
    assert prediction_agreement(student, teacher) == 0.5


def test_agreement_split_known_counts():
    # teacher predictions 0, 1, 2, 0, 1 against labels 0, 1, 0, 1, 1:
    # correct on samples 0, 1, 4; wrong on 2 (says 2) and 3 (says 0)
    eye = np.eye(3)
    teacher = eye[[0, 1, 2, 0, 1]]
    labels = np.array([0, 1, 0, 1, 1])
    # student predicts 0, 2, 2, 1, 1: agrees on correct samples 0 and 4 (2 of 3) and
    # on wrong sample 2 (1 of 2); on sample 3 it predicts the label, not the teacher
    student = eye[[0, 2, 2, 1, 1]]
    correct, incorrect, n_correct, n_incorrect = agreement_split(student, teacher, labels)
    assert (n_correct, n_incorrect) == (3, 2)
    assert correct == pytest.approx(2 / 3)
    assert incorrect == 0.5


def test_agreement_split_empty_subsets_are_nan():
    eye = np.eye(2)
    teacher = eye[[0, 1]]
    all_right = agreement_split(teacher, teacher, np.array([0, 1]))
    assert all_right[0] == 1.0 and math.isnan(all_right[1]) and all_right[2:] == (2, 0)
    all_wrong = agreement_split(teacher, teacher, np.array([1, 0]))
    assert math.isnan(all_wrong[0]) and all_wrong[1] == 1.0 and all_wrong[2:] == (0, 2)


def test_rank_disagreement_hand_cases():
    assert rank_disagreement([[0.0, 1.0, 2.0]], [[5.0, 6.0, 9.0]]) == 0.0
    assert rank_disagreement([[0.0, 1.0, 2.0]], [[2.0, 1.0, 0.0]]) == 1.0
    # one swapped pair of three; averaged with an identical sample
    assert rank_disagreement([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]],
                             [[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]]) == pytest.approx(1 / 6)


def test_rank_disagreement_ties_are_not_discordant():
    # pair (0, 1) is tied in the student, (0, 1) and (2, 3) are -inf ties in the teacher
    student = [[0.0, 0.0, 1.0, 2.0]]
    teacher = [[-np.inf, -np.inf, 3.0, 3.0]]
    # remaining pairs: (0,2) (0,3) (1,2) (1,3) concordant, (2,3) tied in teacher
    assert rank_disagreement(student, teacher) == 0.0
    # reversing the student's (2, 3) order changes nothing (teacher tie); raising class 0 above
    # classes 2 and 3 makes those two pairs discordant
    assert rank_disagreement([[0.0, 0.0, 2.0, 1.0]], teacher) == 0.0
    assert rank_disagreement([[3.0, 0.0, 1.0, 2.0]], teacher) == pytest.approx(2 / 6)


def test_rank_disagreement_matches_kendall_tau():
    rng = np.random.default_rng(1)
    student = rng.normal(size=(40, 9))
    teacher = student + rng.normal(size=(40, 9))
    expected = np.mean([(1 - kendalltau(a, b).statistic) / 2 for a, b in zip(student, teacher)])
    assert rank_disagreement(student, teacher) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_rank_disagreement_does_not_depend_on_chunking(chunk_size):
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(2, 10, 5))
    assert rank_disagreement(student, teacher, chunk_size=chunk_size) == pytest.approx(
        rank_disagreement(student, teacher, chunk_size=1000), rel=1e-15)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        js_divergence(np.ones((2, 3)) / 3, np.ones((2, 4)) / 4)
    with pytest.raises(ValueError):
        rank_disagreement(np.zeros((2, 1)), np.zeros((2, 1)))


def test_student_metrics_hand_worked_three_classes():
    # student p and teacher q per sample (logits are their logs), label y:
    #   1: p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4), y = 1: teacher right, student disagrees
    #   2: p = (1/8, 1/8, 3/4), q = (1/4, 1/4, 1/2), y = 0: teacher wrong (2), student copies it
    #   3: p = q = (1/4, 1/2, 1/4),                  y = 1: teacher right, student agrees
    p = np.array([[1 / 2, 1 / 4, 1 / 4], [1 / 8, 1 / 8, 3 / 4], [1 / 4, 1 / 2, 1 / 4]])
    q = np.array([[1 / 4, 1 / 2, 1 / 4], [1 / 4, 1 / 4, 1 / 2], [1 / 4, 1 / 2, 1 / 4]])
    labels = np.array([1, 0, 1])
    result = student_metrics(np.log(p), np.log(q), labels)
    assert type(result["n_teacher_correct"]) is int and type(result["n_teacher_incorrect"]) is int
    assert all(type(v) is float for k, v in result.items() if not k.startswith("n_"))
    log = math.log
    jsd_1 = 0.5 * log(4 / 3) + 0.25 * log(2 / 3)  # m = (3/8, 3/8, 1/4)
    jsd_2 = 0.5 * (0.25 * log(2 / 3) + 0.75 * log(6 / 5)) + 0.5 * (0.5 * log(4 / 3) + 0.5 * log(4 / 5))
    expected = {
        "accuracy": 1 / 3,  # only sample 3 is right
        "loss": (log(4) + log(8) + log(2)) / 3,  # -log p(y): 1/4, 1/8, 1/2
        "activation_distance": (math.sqrt(2) / 4 + math.sqrt(6) / 8) / 3,
        "js_divergence": (jsd_1 + jsd_2) / 3,
        "prediction_agreement": 2 / 3,
        "correct_agreement": 1 / 2,  # of samples 1 and 3
        "incorrect_agreement": 1.0,  # of sample 2
        "n_teacher_correct": 2,
        "n_teacher_incorrect": 1,
        # sample 1: pair (0, 1) is discordant, (0, 2) and (1, 2) are tied in one ranking
        "rank_disagreement": (1 / 3) / 3,
    }
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_minus_infinity_is_a_class_of_zero_probability():
    result = student_metrics([[0.0, -np.inf]], [[0.0, -np.inf]], np.array([0]))
    assert result["accuracy"] == 1.0 and result["js_divergence"] == 0.0


# ---- calibration --------------------------------------------------------------------------------

INF = float("inf")


def confident(p, c=4):
    """Logits of one sample whose largest softmax probability is p, on class 0, the rest even."""
    return np.log([p] + [(1 - p) / (c - 1)] * (c - 1))


def ece_by_bins(logits, labels, bins):
    """The expected calibration error written out bin by bin, as Guo et al. (2017) do: bins
    (lo, hi] of numpy.linspace(0, 1, bins + 1), confidence the largest softmax probability."""
    p = scipy_softmax(np.asarray(logits, dtype=np.float64), axis=1)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_ece_hand_worked():
    """Four bins (0, .25], (.25, .5], (.5, .75], (.75, 1] of six samples, by hand:
    bin 1: confidence .25 (on its edge), wrong: 1/6 * |0 - .25|;
    bin 2: .5 (on its edge) wrong, .5 right, .4 right: 3/6 * |2/3 - 1.4/3| = 0.1;
    bin 3: empty; bin 4: 1 right, .9 wrong: 2/6 * |1/2 - .95| = 0.15."""
    logits = np.array([[0, 0, 0, 0], [0, 0, -INF, -INF], [0, 0, -INF, -INF], confident(0.4),
                       [0, -INF, -INF, -INF], confident(0.9)])
    labels = np.array([1, 1, 0, 0, 0, 2])  # every argmax is class 0
    assert expected_calibration_error(logits, labels, bins=4) == pytest.approx(0.25 / 6 + 0.25,
                                                                             abs=1e-15)


def test_ece_a_confidence_on_an_edge_falls_in_the_bin_below():
    # .5 is the upper edge of (.25, .5]: with .3 in one bin, 1 * |1/2 - .4|; had it opened
    # (.5, .75] instead, the two bins would give 1/2 * .5 + 1/2 * .7
    logits = np.array([[0, 0, -INF, -INF], confident(0.3)])
    assert expected_calibration_error(logits, np.array([1, 0]), bins=4) == pytest.approx(0.1)


def test_ece_confidence_one_and_empty_bins():
    certain = np.array([[0, -INF, -INF], [5, -INF, -INF]])
    # confidence 1 lands in the last bin, the 14 others are empty and add nothing
    assert expected_calibration_error(certain, np.array([0, 0]), bins=15) == 0.0
    assert expected_calibration_error(certain, np.array([1, 2]), bins=15) == 1.0
    # one bin: |accuracy - mean confidence|
    logits = np.array([confident(0.9), confident(0.6), confident(0.3)])
    assert expected_calibration_error(logits, np.array([0, 1, 0]), bins=1) == pytest.approx(
        abs(2 / 3 - 0.6))


@pytest.mark.parametrize("bins", [1, 2, 7, 15, 40])
def test_ece_matches_the_bin_by_bin_formula(bins):
    rng = np.random.default_rng(bins)
    logits = rng.normal(0.0, 3.0, size=(2000, 10)).astype(np.float32)
    labels = np.where(rng.random(2000) < 0.7, logits.argmax(axis=1), rng.integers(0, 10, 2000))
    assert expected_calibration_error(logits, labels, bins) == pytest.approx(
        ece_by_bins(logits, labels, bins), abs=1e-12)


@pytest.mark.parametrize("bins", [0, -1, 2.5, True])
def test_ece_refuses_a_bin_count_that_is_not_a_positive_integer(bins):
    with pytest.raises(ValueError, match="confidence bins must be an integer >= 1"):
        expected_calibration_error(np.zeros((2, 3)), np.array([0, 1]), bins)


def test_collect_computes_ece_and_the_gap_to_the_teacher_from_the_logits(tmp_path):
    """The models table's ece (with the bin count asked for) and ece_gap come from the stored
    logits: the rows written by training carry neither."""
    from kdpipe.tables import collect_rows

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    np.save(tmp_path / "labels.npy", labels)
    row = {"setup": "s", "dataset": "d", "arch": "mlp", "teacher_id": "s/teacher",
           "width": 1.0, "seed": 0, "accuracy": 0.5, "loss": 1.0, "train_loss": 1.0,
           "n_teacher_correct": 150, "n_teacher_incorrect": 150, "labels_path": "labels.npy"}
    student = {"activation_distance": 0.1, "js_divergence": 0.1, "prediction_agreement": 0.5,
               "correct_agreement": 0.5, "incorrect_agreement": 0.5, "rank_disagreement": 0.2}
    logits, paths = {}, []
    for name, extra in (("teacher", {"role": "teacher", "method": ""}),
                        ("kd", {"role": "student", "method": "kd", "alpha": 0.5,
                                "temperature": 1.0, **student})):
        logits[name] = rng.normal(0.0, 2.0, size=(300, 5)).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", logits[name])
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**row, **extra, "logits_path": f"{name}.npy"}))
        paths.append(path)
    table = collect_rows(paths, tmp_path, ece_bins=7).set_index("method")
    expected = {name: ece_by_bins(logits[name], labels, 7) for name in logits}
    assert table.loc["", "ece"] == pytest.approx(expected["teacher"], abs=1e-12)
    assert table.loc["kd", "ece"] == pytest.approx(expected["kd"], abs=1e-12)
    assert table.loc["kd", "ece_gap"] == pytest.approx(expected["kd"] - expected["teacher"],
                                                       abs=1e-12)
    assert np.isnan(table.loc["", "ece_gap"])
