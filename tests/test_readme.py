"""The README is the front page: its two opening commands are what a new user and CI run, and
it stays a few screens long, the depth living in docs/."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def opening_commands():
    readme = (REPO / "README.md").read_text()
    return [re.sub(r"\s+#.*$", "", line).strip() for line in readme.splitlines()
            if line.startswith("    pip install")][:2]


def test_readme_opens_with_the_study_and_the_test_commands():
    study, tests = opening_commands()
    assert study.endswith("snakemake --cores all")
    assert tests.endswith("pytest")


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = opening_commands()
    ci_lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()]
    assert re.sub(r"\s+", " ", tests) in ci_lines


def test_readme_is_a_front_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
