"""Structure of every notebook in book/ and notebooks/, and of the table of contents.

These checks are what the book's conventions (README, "Writing a chapter") require
of a committed notebook: no outputs, one ``parameters`` cell that reads ``LAMB_PROFILE``, kernel
``python3``, a Colab badge that opens this very file, a settings file that loads at every profile, and a
place in ``_toc.yml``. They run in milliseconds; executing the notebooks is nbval's job (``make test``).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from lamb import profiles

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIRS = ("book", "notebooks")
NOTEBOOKS = sorted(p for d in NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb"))
COLAB = re.compile(r"https://colab\.research\.google\.com/github/large-batch/lamb-book/blob/main/([^\s)\"']+)")
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _toc_files() -> list[str]:
    """Every `file:` of _toc.yml (root included), without suffix, relative to the repository root."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [f.removesuffix(".ipynb").removesuffix(".md") for f in files]


notebook_params = pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)


@notebook_params
def test_committed_without_outputs(path):
    nb = _load(path)
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{_id(path)}: code cells {dirty} have outputs or execution counts (clear them)"


@notebook_params
def test_kernelspec_is_python3(path):
    kernelspec = _load(path)["metadata"].get("kernelspec", {})
    assert kernelspec.get("name") == "python3", f"{_id(path)}: kernelspec {kernelspec!r}, need name 'python3'"


@notebook_params
def test_one_parameters_cell_reading_lamb_profile(path):
    cells = _load(path)["cells"]
    tagged = [i for i, c in enumerate(cells) if "parameters" in _tags(c)]
    assert len(tagged) == 1, f"{_id(path)}: {len(tagged)} cells tagged 'parameters' (need exactly one)"
    cell = cells[tagged[0]]
    assert cell["cell_type"] == "code"
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    assert tagged[0] == first_code, f"{_id(path)}: the parameters cell must be the first code cell"
    # PROFILE = os.environ.get("LAMB_PROFILE", <a known profile>)
    found = False
    for node in ast.walk(ast.parse(_source(cell))):
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PROFILE"]
                and isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "os.environ.get"):
            args = [ast.literal_eval(a) for a in node.value.args]
            assert args[0] == "LAMB_PROFILE", f"{_id(path)}: PROFILE must read LAMB_PROFILE, reads {args[0]!r}"
            assert len(args) == 2 and args[1] in profiles.PROFILES, f"{_id(path)}: default profile {args[1:]}"
            found = True
    assert found, f"{_id(path)}: the parameters cell must set PROFILE = os.environ.get('LAMB_PROFILE', 'cpu')"


@notebook_params
def test_colab_badge_opens_this_file(path):
    cells = _load(path)["cells"]
    first = cells[0]
    assert first["cell_type"] == "markdown" and _source(first).lstrip().startswith("# "), (
        f"{_id(path)}: the first cell must be markdown starting with '# Title'")
    urls = COLAB.findall(_source(first))
    assert urls, f"{_id(path)}: no Colab badge in the first cell"
    assert all(u == _id(path) for u in urls), f"{_id(path)}: Colab badge points at {urls}"


@notebook_params
def test_settings_load_at_every_profile(path):
    name = path.stem
    assert (ROOT / "lamb" / "settings" / f"{name}.toml").is_file(), f"no lamb/settings/{name}.toml"
    for profile in profiles.PROFILES:
        settings = profiles.settings(name, profile)
        assert settings["profile"] == profile
    setup_calls = re.findall(r"lamb\.notebook\.setup\(\s*[\"']([^\"']+)[\"']",
                             "\n".join(_source(c) for c in _load(path)["cells"] if c["cell_type"] == "code"))
    assert setup_calls == [name], f"{_id(path)}: lamb.notebook.setup is called with {setup_calls}, need [{name!r}]"


def test_toc_lists_exactly_the_notebooks():
    listed = _toc_files()
    assert len(listed) == len(set(listed)), f"_toc.yml lists a file twice: {listed}"
    missing = [f for f in listed if not (ROOT / f"{f}.ipynb").is_file() and not (ROOT / f"{f}.md").is_file()]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    unlisted = [_id(p) for p in NOTEBOOKS if _id(p).removesuffix(".ipynb") not in listed]
    assert not unlisted, f"notebooks not in _toc.yml: {unlisted}"
    stray_pages = [p.relative_to(ROOT).as_posix() for p in (ROOT / "book").glob("*.md")
                   if p.relative_to(ROOT).as_posix().removesuffix(".md") not in listed]
    assert not stray_pages, f"pages in book/ not in _toc.yml: {stray_pages}"


def test_every_cited_key_is_in_references_bib():
    import pybtex.database

    keys = set(pybtex.database.parse_file(str(ROOT / "references.bib")).entries)
    texts = {_id(p): "\n".join(_source(c) for c in _load(p)["cells"] if c["cell_type"] == "markdown")
             for p in NOTEBOOKS}
    texts.update({_id(p): p.read_text(encoding="utf-8") for d in NOTEBOOK_DIRS for p in (ROOT / d).glob("*.md")})
    unknown = {where: sorted({k.strip() for m in CITE.findall(text) for k in m.split(",")} - keys)
               for where, text in texts.items()}
    unknown = {k: v for k, v in unknown.items() if v}
    assert not unknown, f"cited keys missing from references.bib: {unknown}"


def test_book_config_executes_safely():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    execute = config["execute"]
    assert execute["execute_notebooks"] in ("cache", "force")
    assert execute["timeout"] >= 300, "the default cell timeout (30 s) kills training cells"
    assert execute["allow_errors"] is False
    assert config["only_build_toc_files"] is True
    for pattern in (".venv", "lamb/**", "tests/**", "results/**", "README.md", "_build"):
        assert pattern in config["exclude_patterns"], pattern
    sphinx = config["sphinx"]["config"]
    # MathJax is served with the book (no CDN): a relative path, inside a folder the build copies.
    assert "://" not in sphinx["mathjax_path"]
    assert "_vendor" in sphinx["html_extra_path"]
    assert config["repository"]["url"] == "https://github.com/large-batch/lamb-book"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
