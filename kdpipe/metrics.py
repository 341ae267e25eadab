"""Functional similarity of a student to its teacher, from test logits (docs/protocol.md section 2).

Every function takes logits of shape [N, C] (N samples, C classes; for a language model every
predicted token position is a sample) and, where needed, integer labels of shape [N]. Arithmetic
is float64 whatever the input dtype. Argmax-based metrics use the logits directly, so classes
whose probabilities underflow to the same value are still ordered. Logarithms are natural.
"""
from __future__ import annotations

import numpy as np

# The metrics that compare a student with its teacher; the statistics are run on these.
FUNCTIONAL_METRICS = (
    "activation_distance",
    "js_divergence",
    "prediction_agreement",
    "correct_agreement",
    "incorrect_agreement",
    "rank_disagreement",
)
# For these a higher value means closer to the teacher; for the other functional metrics, lower.
HIGHER_IS_CLOSER = ("prediction_agreement", "correct_agreement", "incorrect_agreement")
# The student's own performance: tested between methods too, but with no teacher direction.
PERFORMANCE_METRICS = ("accuracy", "loss", "ece")
# Confidence bins of the expected calibration error: 15, the usual choice (stats.ece_bins)
ECE_BINS = 15


def _matrix(x, name: str = "logits") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected {name} of shape [N, C] with N > 0, got {x.shape}")
    return x


def _logits(x, name: str = "logits") -> np.ndarray:
    """Logits [N, C] that are finite or -inf (a class of zero probability); NaN or +inf would
    score as an arbitrary class (argmax of an all-NaN row is class 0), so they are refused."""
    x = _matrix(x, name)
    bad = np.isnan(x) | (x == np.inf)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"{name} are not finite: {int(bad.sum())} NaN or +inf values in "
                         f"{len(rows)} of {len(x)} rows (first: row {rows[0]})")
    if np.isneginf(x).all(axis=1).any():
        row = int(np.flatnonzero(np.isneginf(x).all(axis=1))[0])
        raise ValueError(f"{name} are not finite: row {row} is -inf for every class")
    return x


def _pair(a, b, names=("student logits", "teacher logits")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _logits(a, names[0]), _logits(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return a, b


def _labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected {n} integer labels, got {labels.dtype} of shape {labels.shape}")
    return labels


def log_softmax(logits) -> np.ndarray:
    """Row-wise log-softmax; -inf logits give -inf (zero probability) without warnings."""
    z = _logits(logits)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so that large logits do not overflow."""
    return np.exp(log_softmax(logits))


def accuracy(logits, labels) -> float:
    """Share of samples whose argmax class is the label."""
    logits = _logits(logits)
    labels = _labels(labels, len(logits))
    return float(np.mean(logits.argmax(axis=1) == labels))


def cross_entropy(logits, labels) -> float:
    """Mean cross-entropy -log p(label) in nats."""
    logp = log_softmax(logits)
    labels = _labels(labels, len(logp))
    return float(-np.mean(logp[np.arange(len(logp)), labels]))


def max_probability(logits) -> np.ndarray:
    """Row-wise largest softmax probability max_c softmax(z)_c = 1 / sum_c exp(z_c - max z), in
    float64 without overflow; in [1/C, 1]."""
    z = np.asarray(logits, dtype=np.float64)
    return 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)


def expected_calibration_error(logits, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error (docs/protocol.md section 8): the sum over ``bins`` equal-width
    confidence bins (lo, hi] of (share of samples in the bin) * |accuracy in the bin - mean
    confidence in the bin|, a sample's confidence being its largest softmax probability and its
    prediction the argmax of its logits. In [0, 1].

    The bin edges are numpy.linspace(0, 1, bins + 1): a confidence equal to an edge falls in the
    bin below it, a confidence of 1 in the last bin (confidences are at least 1/C > 0, so none
    falls below the first). An empty bin adds nothing. Each bin's term is
    |sum of its correct - sum of its confidences| / N, the same number without a division by
    the bin's size.
    """
    z = _logits(logits)
    labels = _labels(labels, len(z))
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"the number of confidence bins must be an integer >= 1, got {bins!r}")
    confidence = max_probability(z)
    correct = (z.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges, confidence, side="left") - 1  # edges[i] < c <= edges[i + 1]
    gaps = (np.bincount(index, weights=correct, minlength=bins)
            - np.bincount(index, weights=confidence, minlength=bins))
    return float(np.abs(gaps).sum() / len(z))


def activation_distance(p, q) -> float:
    """Mean over samples of the Euclidean distance between probability vectors p_i and q_i."""
    p, q = _matrix(p, "probabilities"), _matrix(q, "probabilities")
    if p.shape != q.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {q.shape}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError("probabilities are not finite")
    return float(np.mean(np.linalg.norm(p - q, axis=1)))


def js_divergence(student_logits, teacher_logits) -> float:
    """Mean over samples of the Jensen-Shannon divergence JSD(p_i, q_i) in nats, in [0, log 2],
    of p = softmax(student logits) and q = softmax(teacher logits).

    Computed in log space: log m = logsumexp(log p, log q) - log 2, and each KL term sums
    p (log p - log m) over the classes with p > 0. Neither m nor the ratios p / m are formed, so
    a mass that underflows in one distribution (a large logit gap) cannot make a term infinite.
    """
    s, t = _pair(student_logits, teacher_logits)
    log_p, log_q = log_softmax(s), log_softmax(t)
    log_m = np.logaddexp(log_p, log_q) - np.log(2.0)

    def kl_to_mixture(log_a):
        # 0 * log 0 counts as 0; where a > 0, m >= a / 2 > 0 so log_a - log_m is finite
        terms = np.exp(log_a) * (log_a - log_m)
        return np.where(np.isneginf(log_a), 0.0, terms).sum(axis=1)

    with np.errstate(invalid="ignore"):  # -inf - -inf where both masses are 0; masked above
        jsd = 0.5 * kl_to_mixture(log_p) + 0.5 * kl_to_mixture(log_q)
    return float(np.mean(np.clip(jsd, 0.0, np.log(2.0))))  # rounding can leave -1e-17 for p == q


def prediction_agreement(student_logits, teacher_logits) -> float:
    """Share of samples on which student and teacher predict the same class."""
    s, t = _pair(student_logits, teacher_logits)
    return float(np.mean(s.argmax(axis=1) == t.argmax(axis=1)))


def agreement_split(student_logits, teacher_logits, labels) -> tuple[float, float, int, int]:
    """Agreement with the teacher, split by whether the teacher is right.

    Returns (correct_agreement, incorrect_agreement, n_teacher_correct, n_teacher_incorrect):
    the share of teacher-correct samples on which the student predicts the teacher's class, the
    share of teacher-incorrect samples on which the student predicts the teacher's wrong class,
    and the two subset sizes. A share over an empty subset is NaN.
    """
    s, t = _pair(student_logits, teacher_logits)
    labels = _labels(labels, len(t))
    teacher_pred = t.argmax(axis=1)
    agree = s.argmax(axis=1) == teacher_pred
    teacher_correct = teacher_pred == labels
    n_correct = int(teacher_correct.sum())
    n_incorrect = len(labels) - n_correct
    correct_agreement = float(agree[teacher_correct].mean()) if n_correct else float("nan")
    incorrect_agreement = float(agree[~teacher_correct].mean()) if n_incorrect else float("nan")
    return correct_agreement, incorrect_agreement, n_correct, n_incorrect


def rank_disagreement(student_logits, teacher_logits, chunk_size: int = 65536) -> float:
    """Mean over samples of the normalised Kendall distance between the two class rankings.

    For each sample, the share of the C(C-1)/2 class pairs (a, b) that student and teacher order
    in strictly opposite ways; a tie in either ranking (equal logits, or two -inf) is not a
    discordance. Logits order classes like the probabilities but do not underflow into ties.
    Samples are processed chunk_size at a time and pairs one anchor class at a time, so the
    temporaries hold at most chunk_size * (C - 1) values (33 MiB for C = 65 by default).
    """
    s, t = _pair(student_logits, teacher_logits)
    n, c = s.shape
    if c < 2:
        raise ValueError("rank_disagreement needs at least two classes")
    discordant = 0
    with np.errstate(invalid="ignore"):  # -inf - -inf is NaN: its sign is NaN, never discordant
        for start in range(0, n, chunk_size):
            sc, tc = s[start:start + chunk_size], t[start:start + chunk_size]
            for a in range(c - 1):
                ds = np.sign(sc[:, a, None] - sc[:, a + 1:])
                dt = np.sign(tc[:, a, None] - tc[:, a + 1:])
                discordant += int(np.count_nonzero(ds * dt < 0))
    return discordant / (n * c * (c - 1) / 2)


def student_metrics(student_logits, teacher_logits, labels) -> dict:
    """All section-2 metrics of one student against its teacher, as plain Python numbers."""
    s, t = _pair(student_logits, teacher_logits)
    p_s, p_t = softmax(s), softmax(t)
    correct_agreement, incorrect_agreement, n_correct, n_incorrect = agreement_split(s, t, labels)
    return {
        "accuracy": accuracy(s, labels),
        "loss": cross_entropy(s, labels),
        "activation_distance": activation_distance(p_s, p_t),
        "js_divergence": js_divergence(s, t),
        "prediction_agreement": prediction_agreement(s, t),
        "correct_agreement": correct_agreement,
        "incorrect_agreement": incorrect_agreement,
        "n_teacher_correct": n_correct,
        "n_teacher_incorrect": n_incorrect,
        "rank_disagreement": rank_disagreement(s, t),
    }
