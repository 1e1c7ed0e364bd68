"""The repository carries its own documentation: every relative link of the README and of docs/ resolves to a
file in the repository, and no user-facing file (code, errors, docs, scripts) points at a file outside it."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+://|#|mailto:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(page):
    links = relative_links(page)
    for target in links:
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(REPO), f"{page.name}: {target} leaves the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"


def test_link_extraction_sees_links():
    assert "docs/TRAINING.md" in relative_links(REPO / "README.md")
    assert all(p.exists() for p in PAGES)


def user_facing_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "pyproject.toml", *REPO.glob("docs/*.md"), *REPO.glob("scripts/*"),
             *REPO.glob("benchmarks/*.py"), *REPO.glob("benchmarks/*.md")]
    return files + sorted((REPO / "mtl").rglob("*.py"))


def test_nothing_points_outside_the_repository():
    bad = re.compile(r"\.\./shared|DESIGN\.md|\bresearch/[\w-]+\.md")
    hits = [f"{f.relative_to(REPO)}:{i}: {line.strip()}" for f in user_facing_files() if f.is_file()
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if bad.search(line)]
    assert not hits, "\n".join(hits)
