"""The README and docs/ link to each other's sections: every relative link must reach a file and a heading."""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_heading_anchors_follow_github():
    anchors = heading_anchors(ROOT / "docs" / "toy-demo.md")
    assert "table-9s-other-ablation-spatial-attention-in-dsps-place" in anchors
    assert "what-lora-and-the-adapter-gain-with-sams-mask-heads" in anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(page):
    links = [target for target in LINK.findall(page.read_text()) if "://" not in target]
    assert links, f"{page} has no relative link to check"
    for target in links:
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: {target} points to a missing file"
        if anchor:
            assert anchor in heading_anchors(destination), f"{page.name}: {target} names no heading"


def test_readme_is_short_and_ci_runs_its_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 260, "the README is user documentation: measurements belong in docs/"
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command in readme.splitlines(), f"the README's test command is not .ci/run's: {ci_command}"
