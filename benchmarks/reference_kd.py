"""The reference: distilling one student the usual tutorial way, one student per process.

A DataLoader over a TensorDataset, the teacher run on every batch, Adam, T = 1, on the same
kdpipe MLP. It is what kdpipe's loop is measured against in bench_training.py; the workflow does
not use it.

    python benchmarks/reference_kd.py TEACHER.pt EPOCHS ALPHA SEED
"""
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from kdpipe.models import build


def main(teacher_path, epochs, alpha, seed):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.7, stratify=y, random_state=0)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True)
    teacher = build("mlp", (1, 8, 8), 10, 1.0)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    teacher.eval()
    student = build("mlp", (1, 8, 8), 10, 1.0)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(epochs):
        for xb, yb in loader:
            with torch.no_grad():
                teacher_logits = teacher(xb)
            logits = student(xb)
            kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher_logits, -1),
                          log_target=True, reduction="batchmean")
            loss = (1 - alpha) * F.cross_entropy(logits, yb) + alpha * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
