"""A researcher's own distillation loss for kdpipe (docs/methods.md): kd with the reverse KL,
KL(student || teacher), which is mode-seeking: does it copy the teacher's errors as kd does?

Declared in a study's config, with this file in the folder Snakemake runs in:

    methods:
      reverse-kd: {loss: "reverse_kd.py:reverse_kd", uses_temperature: true}
"""
import torch.nn.functional as F


def reverse_kd(student_logits, labels, target_logits, alpha, temperature, sample_weights=None):
    """(1 - alpha) CE(y, z_s) + alpha T^2 KL(softmax(z_s / T) || softmax(z_t / T)), batch mean.

    student_logits and target_logits [B, C] (or [B, L, C]: every position is a sample), labels
    [B] (or [B, L]); alpha and temperature floats, or 0-d tensors when kdpipe trains several
    students as one stacked computation; sample_weights None (or [B], a weight per sample's
    distillation term). Written with tensor operations only, so that it works under
    torch.func.vmap.
    """
    classes = student_logits.shape[-1]
    z, y = student_logits.reshape(-1, classes), labels.reshape(-1)
    log_p = F.log_softmax(z / temperature, dim=-1)
    log_q = F.log_softmax(target_logits.reshape(-1, classes) / temperature, dim=-1)
    per_sample = (log_p.exp() * (log_p - log_q)).sum(-1)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.reshape(-1)
    return (1 - alpha) * F.cross_entropy(z, y) + alpha * temperature ** 2 * per_sample.mean()
