"""The README and docs/ pages: every relative link resolves, to a file and, with #anchor, a heading."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = [line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_readme_shows_and_explains_each_column_a_default_run_prints():
    """The README's sample of `make run`'s table has the columns `spark-vl run` prints for the
    default (best of n is off there), and its guide to the columns explains each one."""
    from spark_vl.cli.app import EVAL_COLUMNS

    readme = (ROOT / "README.md").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("iteration "))
    shown = [header[i:i + 10].strip() for i in range(9, len(header), 10)]
    best_of_n = {"eval/task_acc_best_of_n", "eval/task_acc_sampled", "eval/task_acc_majority"}
    assert shown == [title for key, title in EVAL_COLUMNS if key not in best_of_n]
    guide = readme[readme.index("How to read the columns"):]
    assert [title for title in shown if f"`{title}`" not in guide] == []
