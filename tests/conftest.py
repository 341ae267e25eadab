"""Shared fixtures and the helpers that run the real workflow (tests/test_workflow.py and
others import them: `from conftest import snakemake`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The small real data sets beside the project (KDPIPE_SHARED_DATA, default ../shared/data)."""
    root = Path(os.environ.get("KDPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data folder {root} is absent (set KDPIPE_SHARED_DATA)")
    return root


TINY = {
    "datasets": {"digits": {"family": "digits"}},
    "setups": {"digits-mlp": {"dataset": "digits", "arch": "mlp",
                              "recipe": {"epochs": 12, "batch_size": 32}}},
    "alphas": [0.5],
    "widths": [0.5, 1],
    "seeds": [0, 1, 2],
    "plots": {"formats": ["png"], "dpi": 60},
}


def write_config(workdir: Path, **changes) -> Path:
    config = {**json.loads(json.dumps(TINY)), **changes}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# The rules call `python -m kdpipe`: this interpreter must be the `python` they find.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *args, check=True, config=None, **popen):
    """Run the workflow in ``workdir`` on ``config`` (default: workdir/config.yaml)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(config or workdir / "config.yaml"), "--cores", "2",
           *args]
    if popen:
        return subprocess.Popen(cmd, env=ENV, **popen)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def planned_jobs(workdir: Path, config=None) -> dict:
    """rule -> count of the jobs a dry run would execute ({} when nothing is to be done)."""
    result = snakemake(workdir, "-n", config=config)
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].strip().splitlines()[2:]
    jobs = {}
    for line in table:
        if not line.strip():
            break
        rule, count = line.split()
        jobs[rule] = int(count)
    jobs.pop("total")
    return jobs


def tables(workdir: Path) -> dict:
    folder = workdir / "results" / "tables"
    return {name: pd.read_parquet(folder / f"{name}.parquet")
            for name in ("models", "stats", "asymmetry", "scaling")}
