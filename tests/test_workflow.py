"""The publishing workflow (.github/workflows/book.yml), checked as far as a machine without GitHub allows:
it is valid YAML, it builds with exactly the README's build command, it uploads the directory that command
writes, it keeps jupyter-book's execution cache between runs, and it deploys only from the repository that
_config.yml names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{WORKFLOW} is not a YAML mapping"
    return data


def _steps(workflow, job):
    return workflow["jobs"][job]["steps"]


def _readme_build_command() -> str:
    """The README's build command: the line of its first bash block that builds the whole book."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    books = [c for c in commands if c.startswith("make book")]
    assert len(books) == 1, f"expected one `make book` line in the README's first bash block, got {books}"
    return books[0]


def test_triggers(workflow):
    # PyYAML reads the bare key `on` as the boolean True (YAML 1.1).
    on = workflow.get("on", workflow.get(True))
    assert on is not None, "the workflow has no `on:` triggers"
    assert on["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in on


def test_builds_with_the_readme_command(workflow):
    runs = [step["run"].strip() for step in _steps(workflow, "build") if "run" in step]
    assert runs == [_readme_build_command()], runs


def test_uploads_what_make_book_writes(workflow):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    build_dir = re.search(r"^BUILD_DIR := (\S+)$", makefile, re.M).group(1)
    recipe = re.search(r"^book:.*\n\t(.+)$", makefile, re.M).group(1)
    assert "scripts/build_book.sh cpu ." in recipe, recipe          # the output root is the repository root
    uploads = [s for s in _steps(workflow, "build") if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert len(uploads) == 1
    assert uploads[0]["with"]["path"] == f"{build_dir}/html"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"{build_dir}/html/index.html" in readme


def test_keeps_the_execution_cache(workflow):
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["execute"]["execute_notebooks"] == "cache"
    caches = [s for s in _steps(workflow, "build") if s.get("uses", "").startswith("actions/cache@")]
    assert len(caches) == 1
    paths = caches[0]["with"]["path"].split()
    # the cache and the fingerprint that scripts/build_book.sh compares before trusting it
    assert {"_build/.jupyter_cache", "_build/.lamb-fingerprint"} <= set(paths), paths
    script = (ROOT / "scripts" / "build_book.sh").read_text(encoding="utf-8")
    assert ".jupyter_cache" in script and ".lamb-fingerprint" in script


def test_deploys_to_pages_for_the_configured_repository(workflow):
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    repository = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)/?", config["repository"]["url"]).group(1)
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert f"github.repository == '{repository}'" in deploy["if"]
    assert deploy["environment"]["name"] == "github-pages"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])
    permissions = workflow["permissions"]
    assert permissions["pages"] == "write" and permissions["id-token"] == "write"


def test_actions_are_pinned_to_a_major_version(workflow):
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]
