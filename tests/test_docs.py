"""The repository explains itself: every test a doc cites exists, every relative link leads to a file, and no
doc or code refers to files outside the repository."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

# Never the repository's text: a virtual environment, run outputs, git's own folder.
NOT_OURS = {".git", ".venv", "venv", "out", "site-packages"}
# A cited test with its full path (tests/... or experiments/digits/tests/...), then any `, ::other` after it.
CITED = re.compile(r"(?<![\w./-])((?:[\w-]+/)*tests/test_\w+\.py)::(\w+)((?:, ::\w+)*)")


def walk(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if not NOT_OURS & set(p.relative_to(root).parts))


def repository_files(root: Path, suffix: str) -> list[Path]:
    """The repository's files (tracked, or new and not ignored): a .venv or out/ inside the clone is not its text."""
    try:
        cmd = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
        listed = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):  # no git, or not a clone (an unpacked archive)
        return walk(root, suffix)
    files = (root / f for f in listed if f.endswith(suffix) and not NOT_OURS & set(Path(f).parts))
    return sorted(p for p in files if p.is_file())  # a tracked file deleted in the work tree is not read


DOCS = repository_files(ROOT, ".md")
CODE = repository_files(ROOT, ".py")


def _functions(test_file: str) -> set[str]:
    return set(re.findall(r"^def (test_\w+)", (ROOT / test_file).read_text(), flags=re.M))


def cited_tests(text: str) -> list[tuple[str, str]]:
    return [(path, n) for path, first, more in CITED.findall(text) for n in [first, *re.findall(r"::(\w+)", more)]]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_tests_exist(doc):
    for path, name in cited_tests(doc.read_text()):
        assert (ROOT / path).is_file(), f"{doc.name} cites {path}"
        assert name in _functions(path), f"{doc.name} cites {path}::{name}, which does not exist"


def test_citations_are_read_with_their_full_path():
    text = "(experiments/digits/tests/test_ceiling.py::test_a, ::test_b; tests/test_cli.py::test_c) x/tests/test_d.py"
    assert cited_tests(text) == [
        ("experiments/digits/tests/test_ceiling.py", "test_a"),
        ("experiments/digits/tests/test_ceiling.py", "test_b"),
        ("tests/test_cli.py", "test_c"),
    ]


@pytest.mark.parametrize("git", [True, False], ids=["git", "no git"])
def test_only_the_repositorys_own_files_are_read(tmp_path, monkeypatch, git):
    """In a clone (.venv ignored or not, a new file not yet added) and in a folder without git."""
    assert ROOT / "tests" / "test_docs.py" in CODE and ROOT / "README.md" in DOCS
    names = ["a.py", "pkg/b.py", "ignored.py", ".venv/lib/python3.11/site-packages/c.py", "venv/d.py", "out/e.py"]
    for f in names:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    if git:
        if not shutil.which("git"):
            pytest.skip("git is not installed")
        (tmp_path / ".gitignore").write_text("/ignored.py\n")
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
        subprocess.run(["git", "add", "pkg"], cwd=tmp_path, check=True)  # a.py stays new, not yet added
        expected = [tmp_path / "a.py", tmp_path / "pkg" / "b.py"]
    else:

        def no_git(*args, **kwargs):
            raise FileNotFoundError("git")

        monkeypatch.setattr(subprocess, "run", no_git)
        expected = [tmp_path / "a.py", tmp_path / "ignored.py", tmp_path / "pkg" / "b.py"]
    assert repository_files(tmp_path, ".py") == expected


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(doc):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if not re.match(r"[a-z]+://", target):
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which is not in the repository"


@pytest.mark.parametrize("path", DOCS + CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(path):
    text = path.read_text()
    assert "REFERENCE" + ".md" not in text and "../" + "shared" not in text, path
    assert not re.search(r"\b(issue #?\d|this sess" + r"ion)", text, flags=re.I), path


def test_the_product_never_imports_the_lab():
    """experiments/ measures and investigates; the tool (top level, demo/, tools/, digits/, tests/) stands
    without it, and at most 14 modules stand at the top level."""
    lab = re.compile(r"^\s*(from|import)\s+experiments\b", flags=re.M)
    product = [p for p in CODE if p.relative_to(ROOT).parts[0] != "experiments"]
    assert product and not [p for p in product if lab.search(p.read_text())]
    assert len([p for p in CODE if len(p.relative_to(ROOT).parts) == 1]) <= 14
