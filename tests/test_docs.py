"""The repository explains itself: every test a doc cites exists, every relative link leads to a file, and no
doc or code refers to files outside the repository."""

import re

import pytest
from conftest import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), ROOT / "digits" / "README.md"])
CODE = sorted(p for p in ROOT.rglob("*.py") if ".git" not in p.parts and "out" not in p.parts)


def _functions(test_file: str) -> set[str]:
    return set(re.findall(r"^def (test_\w+)", (ROOT / test_file).read_text(), flags=re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_tests_exist(doc):
    text = doc.read_text()
    for path, name in re.findall(r"(tests/test_\w+\.py)::(\w+)", text):
        assert (ROOT / path).is_file(), f"{doc.name} cites {path}"
        assert name in _functions(path), f"{doc.name} cites {path}::{name}, which does not exist"


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
