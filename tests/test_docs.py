"""The documentation stands alone and stays true to the schema: every relative link of the
Markdown pages resolves (a #anchor to a heading of its file), every docs page is reachable from
the README, config/README.md names exactly the keys the config schema has, nothing in the
repository names a path outside it, and no page, comment or test speaks of the project's
development history."""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
CONFIG_README = REPO / "config/README.md"
PAGES = [REPO / "README.md", CONFIG_README, REPO / "benchmarks/RESULTS.md",
         *sorted((REPO / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FILE = re.compile(r"\.(parquet|csv|py|md|yaml|png|pdf|svg|json|npy|pt|smk|rst|txt|log)$")


def prose(text: str) -> str:
    """The Markdown without fenced or indented code blocks and inline code, where link-like
    text is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    text = re.sub(r"(?:^|\n\n)(?: {4}.*(?:\n|$))+", "\n\n", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen, found = {}, set()
    for line in prose(page.read_text()).splitlines():
        match = HEADING.match(line)
        if match:
            base = slug(re.sub(r"`", "", match.group(2)))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto:


def repository_files() -> list[Path]:
    """Every file git tracks or would track (new files not yet committed included)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                                 "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's files cannot be listed")
    return [REPO / name for name in listed.decode().split("\0")
            if name and (REPO / name).is_file()]


def text_files() -> dict[str, str]:
    """Path relative to the repository -> text, for every repository file that is text."""
    texts = {}
    for path in repository_files():
        try:
            texts[path.relative_to(REPO).as_posix()] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binary files
    return texts


def test_the_pages_the_readme_promises_exist():
    for name in ("protocol", "outputs", "engine", "cluster", "reruns", "troubleshooting",
                 "choices"):
        assert (REPO / "docs" / f"{name}.md").is_file(), name
    for page in PAGES:
        assert page.is_file(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if REPO not in resolved.parents and resolved != REPO:
            broken.append(f"{target}: outside the repository")
        elif not resolved.is_file():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_link_checker_sees_links_anchors_and_code():
    text = ("# A title: `x` (y)\n\n[a](b.md#c) ![i](d.png)\n\n    [not](a-link.md)\n\n"
            "`[no](e.md)`\n")
    assert LINK.findall(prose(text)) == ["b.md#c", "d.png"]
    assert slug("A title: x (y)") == "a-title-x-y"
    assert slug("7. The paper's scope") == "7-the-papers-scope"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve()
              for target in relative_links(REPO / "README.md")}
    missing = [p.relative_to(REPO).as_posix() for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"pages the README does not link: {missing}"


def schema_keys() -> set[str]:
    """Every key of the config schema as a path: nested properties joined by dots, "<*>" for
    the entries of a mapping of names (datasets, setups, teachers) and the recipe definition under
    every $ref to it. The schema is the file's with the method sections of the registry
    (kdpipe.config.schema)."""
    from kdpipe.config import schema as config_schema

    schema = config_schema(SCHEMA)
    definitions = schema.get("definitions", {})
    keys = set()

    def walk(node: dict, path: tuple):
        if "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[-1]]
        for name, sub in node.get("properties", {}).items():
            keys.add(".".join(path + (name,)))
            walk(sub, path + (name,))
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], path + ("<*>",))

    walk(schema, ())
    return keys


def documented_keys() -> list[str]:
    """The keys config/README.md documents: the first column of its tables."""
    return re.findall(r"^\| `([^`]+)` \|", CONFIG_README.read_text(), flags=re.M)


def matches(documented: str, key: str) -> bool:
    """A documented key such as setups.<name>.recipe.lr stands for the schema's
    setups.<*>.recipe.lr: any <placeholder> matches <*>."""
    parts, names = documented.split("."), key.split(".")
    return len(parts) == len(names) and all(
        n == p or (n == "<*>" and re.fullmatch(r"<[^<>]+>", p)) for p, n in zip(parts, names))


def test_the_schema_walk_finds_nested_mapped_and_referenced_keys():
    keys = schema_keys()
    for key in ("block.seeds", "stats.level", "setups.<*>.recipe.lr",
                "setups.<*>.teachers.<*>.seed", "datasets.<*>.resources.mem_mb"):
        assert key in keys
    assert matches("setups.<name>.recipe.lr", "setups.<*>.recipe.lr")
    assert not matches("setups.recipe.lr", "setups.<*>.recipe.lr")


def test_config_readme_names_every_schema_key():
    documented = documented_keys()
    missing = sorted(k for k in schema_keys() if not any(matches(d, k) for d in documented))
    assert not missing, f"config/README.md does not describe: {missing}"


def test_config_readme_names_no_key_the_schema_lacks():
    keys = schema_keys()
    unknown = [d for d in documented_keys() if not any(matches(d, k) for k in keys)]
    assert not unknown, f"config/README.md describes keys the schema does not have: {unknown}"


def test_keys_named_in_the_pages_are_schema_keys():
    """A dotted name in code quotes that starts with a top-level key (`stats.level`,
    `setups.<name>.recipe.lr`) is a key of the schema or a mapping on the way to one; file names
    such as `stats.parquet` are not keys."""
    keys = schema_keys()
    top = {key.split(".")[0] for key in keys}
    prefixes = {".".join(key.split(".")[:n]) for key in keys for n in range(1, key.count(".") + 2)}
    stale = []
    for page in PAGES:
        for name in re.findall(r"`([^`\s]+)`", page.read_text()):
            parts = name.split(".")
            if (parts[0] in top and len(parts) > 1 and not FILE.search(name)
                    and not any(matches(name, prefix) for prefix in prefixes)):
                stale.append(f"{page.relative_to(REPO)}: {name}")
    assert not stale, stale


# The folder beside the repository where CI's machine keeps the small real data sets. CI's own
# script is the one file that may name it: it runs on a machine laid out for it.
OUTSIDE = re.compile(r"\.\./shared")
OUTSIDE_ALLOWED = {".ci/run"}


def test_nothing_in_the_repository_names_a_path_outside_it():
    offending = [name for name, text in text_files().items()
                 if OUTSIDE.search(text) and name not in OUTSIDE_ALLOWED]
    assert not offending, f"files naming the folder beside the repository: {offending}"


# Words of the project's development history, which a user cannot follow, and the folders of a
# development machine: a page, comment or test names what a thing is or protects instead.
HISTORY = [re.compile(r"\bthe issue\b", re.I), re.compile(r"\bissue \d", re.I),
           re.compile(r"\bthe latest session\b", re.I), re.compile(r"\bmachine [AB]\b"),
           re.compile(r"/work/")]


def test_no_development_history_in_pages_code_or_tests():
    found = [f"{name}: {pattern.pattern}" for name, text in text_files().items()
             if name != "tests/test_docs.py" for pattern in HISTORY if pattern.search(text)]
    assert not found, found
