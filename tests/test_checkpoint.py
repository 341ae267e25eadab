"""A killed training job resumes from its checkpoint and ends exactly as an uninterrupted one."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import full_recipe
from kdpipe import config, models
from kdpipe.train import Checkpoint, Learner, RandomLogits, generator, train

torch.set_num_threads(1)


class Killed(Exception):
    pass


def learners():
    base = models.build("mlp", (6,), 3, 0.1)
    models.init_parameters(base, generator(1))
    kd = models.build("mlp", (6,), 3, 0.1)
    kd.load_state_dict(base.state_dict())
    return [Learner("siddo", base, order_seed=3),
            Learner("rcd", kd, RandomLogits(40, 3, seed=2), 0.5, 2.0, order_seed=3)]


def test_resumed_training_equals_uninterrupted(tmp_path):
    g = generator(0)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    recipe = full_recipe(epochs=5, batch_size=8, schedule="cosine")
    reference = learners()
    train(reference, x, y, recipe)

    checkpoint = Checkpoint(tmp_path / "state.pt", every=2, key="job")

    def die_in_epoch_3(epoch, _):
        if epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        train(learners(), x, y, recipe, log=die_in_epoch_3, checkpoint=checkpoint)
    assert checkpoint.path.exists()
    resumed = learners()
    train(resumed, x, y, recipe, checkpoint=checkpoint)
    for a, b in zip(reference, resumed):
        assert a.history == b.history
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            assert torch.equal(p, q)

    # a checkpoint of another run (other key) is ignored: training starts from scratch
    other = Checkpoint(checkpoint.path, every=2, key="another job")
    fresh = learners()
    seen = []
    train(fresh, x, y, recipe, log=lambda e, _: seen.append(e), checkpoint=other)
    assert seen == [1, 2, 3, 4, 5]


def kdpipe(*args, wait=True, stderr=subprocess.DEVNULL):
    """Run (or with wait=False start) a kdpipe step in its own process."""
    cmd = [sys.executable, "-m", "kdpipe", *map(str, args)]
    job = subprocess.Popen(cmd, env={**os.environ, "KDPIPE_SERVER": ""}, stderr=stderr)
    if wait:
        assert job.wait(timeout=300) == 0
    return job


def test_sigterm_mid_training_then_rerun_gives_the_same_metrics(tmp_path):
    data, labels = tmp_path / "digits.pt", tmp_path / "digits.labels.npy"
    kdpipe("prepare-data", "--spec", json.dumps({"family": "digits", "options": {}}),
           "--raw-dir", tmp_path, "--out", data, "--labels-out", labels)
    base = {"setup": "s", "dataset": "digits", "arch": "mlp", "teacher_id": "s/teacher"}
    common = ["--data", data, "--labels", labels, "--results", tmp_path, "--device", "cpu"]
    teacher = {**base, "seed": 0, "recipe": config.recipe(epochs=2, batch_size=64)}
    kdpipe("train-teacher", "--spec", json.dumps(teacher), *common, "--out", tmp_path / "teacher")
    pair = {"seed": 1, "run": "s1", "alpha": 0.5, "temperature": 1.0}
    spec = json.dumps({**base, "width": 0.5, "recipe": config.recipe(epochs=40, batch_size=16),
                       "students": [{"method": "kd", **pair}, {"method": "rcd", **pair}]})

    def students(out, **run):  # a block job, its students stored below a copy of the teacher
        if not out.exists():
            shutil.copytree(tmp_path / "teacher", out)
        return kdpipe("train-block", "--spec", spec, *common, "--teacher", out,
                      "--manifest", out / "blocks/block.json",
                      "--checkpoint-dir", tmp_path / "checkpoints", "--checkpoint-every", "1",
                      **run)

    students(tmp_path / "uninterrupted")
    assert not list((tmp_path / "checkpoints").iterdir())  # removed once the job is done

    log = open(tmp_path / "killed.log", "w")
    job = students(tmp_path / "resumed", wait=False, stderr=log)
    deadline = time.time() + 120
    while not (tmp_path / "killed.log").read_text().count("epoch 3/40"):
        assert job.poll() is None and time.time() < deadline, "job ended before it was killed"
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) != 0
    assert not (tmp_path / "resumed/kd/s1/row.json").exists()
    assert list((tmp_path / "checkpoints").iterdir())

    students(tmp_path / "resumed", stderr=open(tmp_path / "resumed.log", "w"))
    assert "resumed from" in (tmp_path / "resumed.log").read_text()
    for method in ("kd", "rcd"):
        row = json.loads((tmp_path / "uninterrupted" / method / "s1/row.json").read_text())
        again = json.loads((tmp_path / "resumed" / method / "s1/row.json").read_text())
        assert {k: v for k, v in row.items() if k != "logits_path"} == \
               {k: v for k, v in again.items() if k != "logits_path"}
