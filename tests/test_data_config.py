"""A dataset's config entry: its cluster resources (its options' checks: tests/test_faults.py)."""
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ENV, REPO


def dry_run(workdir: Path, config: dict, *targets):
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(workdir / "config.yaml"), "-n", "-p", *targets],
        capture_output=True, text=True, timeout=300, env=ENV)


def test_prepare_data_asks_for_the_datasets_memory(tmp_path):
    config = {
        "datasets": {"digits": {"family": "digits"},
                     "big": {"family": "digits", "options": {"split_seed": 1},
                             "resources": {"mem_mb": 12345, "runtime": 90}}},
        "setups": {"digits-mlp": {"dataset": "digits", "arch": "mlp", "recipe": {"epochs": 1, "batch_size": 32}}},
        "widths": [1], "seeds": [0],
    }
    result = dry_run(tmp_path, config, "results/data/big.pt", "results/data/digits.pt")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = {block.split("wildcards: dataset=")[1].split()[0]: block
            for block in result.stdout.split("rule prepare_data:")[1:]}
    assert "mem_mb=12345" in jobs["big"] and "runtime=90" in jobs["big"]
    assert "mem_mb=4000" in jobs["digits"] and "runtime=60" in jobs["digits"]  # the schema's defaults
    # the resources are not part of the job's spec: changing them reruns nothing
    assert "resources" not in jobs["big"].split("--spec")[1].split("--raw-dir")[0]
