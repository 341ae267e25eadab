import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import kendalltau

from kdpipe import metrics
from kdpipe.metrics import (
    accuracy,
    activation_distance,
    agreement_split,
    cross_entropy,
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


def test_js_divergence_matches_scipy():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(50, 7)))
    q = softmax(rng.normal(size=(50, 7)) * 3)
    expected = np.mean([jensenshannon(a, b) ** 2 for a, b in zip(p, q)])
    assert js_divergence(p, q) == pytest.approx(expected, rel=1e-10)


def test_js_divergence_hand_cases():
    # disjoint supports: the maximum, log 2; identical rows: exactly 0
    assert js_divergence([[1.0, 0.0]], [[0.0, 1.0]]) == pytest.approx(math.log(2))
    assert js_divergence([[0.2, 0.8]], [[0.2, 0.8]]) == 0.0
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4):
    # JSD = 1/2 log(4/3) + 1/2 (1/2 log(2/3) + 1/2 log 2)
    expected = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert js_divergence([[1.0, 0.0]], [[0.5, 0.5]]) == pytest.approx(expected, rel=1e-12)


def test_js_divergence_with_zero_probability_classes():
    student = softmax([[0.0, -np.inf, 1.0, -1e4], [-1e4, 2.0, 0.0, -np.inf]])
    teacher = softmax([[-np.inf, 0.0, 1.0, 0.5], [-1e4, -1e4, 0.0, 1.0]])
    assert (student == 0).sum() == 4 and (teacher == 0).sum() == 3
    value = js_divergence(student, teacher)
    expected = np.mean([jensenshannon(a, b) ** 2 for a, b in zip(student, teacher)])
    assert np.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-10)


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


def test_student_metrics_keys_types_and_values():
    eye = np.eye(3)
    teacher = 5 * eye[[0, 1, 2, 0, 1]]
    student = 5 * eye[[0, 2, 2, 1, 1]]
    labels = np.array([0, 1, 0, 1, 1])
    result = student_metrics(student, teacher, labels)
    assert set(result) == {"accuracy", "loss", "activation_distance", "js_divergence",
                           "prediction_agreement", "correct_agreement", "incorrect_agreement",
                           "n_teacher_correct", "n_teacher_incorrect", "rank_disagreement"}
    assert all(type(v) is float for k, v in result.items() if not k.startswith("n_"))
    assert type(result["n_teacher_correct"]) is int and type(result["n_teacher_incorrect"]) is int
    p_s, p_t = softmax(student), softmax(teacher)
    assert result["accuracy"] == 3 / 5
    assert result["loss"] == pytest.approx(cross_entropy(student, labels))
    assert result["activation_distance"] == pytest.approx(activation_distance(p_s, p_t))
    assert result["js_divergence"] == pytest.approx(js_divergence(p_s, p_t))
    assert result["prediction_agreement"] == 3 / 5
    assert (result["n_teacher_correct"], result["n_teacher_incorrect"]) == (3, 2)
    # on the 2 disagreeing samples only the pair of the two predicted classes is discordant;
    # the other two pairs are tied in one of the one-hot rankings
    assert result["rank_disagreement"] == pytest.approx(2 / 5 * 1 / 3)


def test_metric_name_constants():
    assert metrics.FUNCTIONAL_METRICS == ("activation_distance", "js_divergence",
                                          "prediction_agreement", "correct_agreement",
                                          "incorrect_agreement", "rank_disagreement")
    assert set(metrics.HIGHER_IS_CLOSER) == {"prediction_agreement", "correct_agreement",
                                             "incorrect_agreement"}
