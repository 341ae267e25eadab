"""`snakemake --profile slurm` through a real SLURM: the one-node cluster that .ci/run starts
with tests/slurm/start_cluster.sh. Skips, saying why, where no cluster answers; .ci/run, which
starts the cluster, makes that skip a failure (KDPIPE_FAIL_ON_SKIP, tests/conftest.py)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
ENV.pop("KDPIPE_SLURM_PARTITION", None)  # the cluster's default partition
ENV.pop("KDPIPE_SLURM_ACCOUNT", None)

CONFIG = {
    "datasets": {"digits": {"family": "digits"}},
    "setups": {"digits-mlp": {"dataset": "digits", "arch": "mlp",
                              "recipe": {"epochs": 2, "batch_size": 32},
                              "resources": {"gpu": 1, "mem_mb": 1000, "runtime": 10}}},
    "alphas": [0.5],
    "widths": [1],
    "seeds": [0, 1, 2],
    "block": {"seeds": 1},  # three small block jobs, to be packed into one allocation
    "plots": {"formats": ["png"], "dpi": 50},
}


def cluster_problem():
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM's client commands are not installed (tests/slurm/start_cluster.sh does it)"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if states.returncode != 0 or not {"idle", "mix", "alloc"} & set(states.stdout.split()):
        return f"no SLURM node is up (sinfo: {states.stdout.strip() or states.stderr.strip()})"
    return None


PROBLEM = cluster_problem()
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def cluster():
    """Skip where no cluster answers (a failure under .ci/run)."""
    if PROBLEM is not None:
        pytest.skip(PROBLEM)


def run(workdir: Path, *args):
    cmd = ["timeout", "-s", "INT", "300", sys.executable, "-m", "snakemake",
           "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=330)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_study_runs_under_slurm_packed_and_matches_a_local_run(tmp_path):
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    for folder in (slurm_dir, local_dir):
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run(slurm_dir, "--profile", str(REPO / "slurm"), "--group-components", "students=3",
        "--slurm-init-seconds-before-status-checks", "2")
    run(local_dir, "--cores", "2")

    def slurm_job(log: Path) -> str:
        found = re.search(r"SLURM job (\d+)", log.read_text())
        assert found, f"{log} does not show a SLURM job id"
        return found.group(1)

    logs = slurm_dir / "results/logs"
    teacher = slurm_job(logs / "train_teacher/digits-mlp/teacher.log")
    blocks = [slurm_job(p) for p in sorted((logs / "train_block/digits-mlp/teacher").glob("*.log"))]
    # three block jobs (kd, rcd and siddo of one seed each), packed into one allocation
    assert len(blocks) == 3 and len(set(blocks)) == 1
    assert teacher not in blocks

    for name in ("models", "stats", "asymmetry", "scaling"):
        on_slurm = pd.read_parquet(slurm_dir / f"results/tables/{name}.parquet")
        local = pd.read_parquet(local_dir / f"results/tables/{name}.parquet")
        pd.testing.assert_frame_equal(on_slurm, local, check_exact=True, obj=name)
