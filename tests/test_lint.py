"""The workflow follows the Snakemake conventions (`snakemake --lint` and `snakefmt` are clean),
and ruff finds none of the bugs its rules in pyproject.toml look for in the package, the tests and
the benchmarks."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFILES = [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]


def test_snakemake_lint_reports_nothing():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s",
                             str(REPO / "Snakefile"), "--directory", str(REPO)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_snakefiles_are_snakefmt_formatted():
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--diff",
                             *map(str, SNAKEFILES)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "kdpipe", "tests",
                             "benchmarks"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
