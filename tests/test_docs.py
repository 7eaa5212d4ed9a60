"""The documentation: every relative link (and its #anchor) points to something that exists,
the README stays a short front page, and what it quotes and promises matches the project."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmdistill.registry import Registry
from tests.conftest import ROOT

PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "workflow").rglob("*.md")],
    key=str,
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def links(text: str) -> list[str]:
    """Targets of Markdown links and images, outside code blocks and inline code."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(page: Path) -> list[str]:
    """Each missing target once, in the order the page links to it."""
    broken = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {shown(dest)})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {shown(dest)})")
    return list(dict.fromkeys(broken))


def test_the_link_checker_sees_links_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\n## Robustness to missing modalities\n\n"
        "[ok](#top) [ok](page.md#robustness-to-missing-modalities) ![img](page.md) [web](https://x.org/y)\n"
        "[gone](missing.md) [bad anchor](#nowhere) `[in code](also-missing.md)`\n"
        "```\n[in a block](missing-too.md)\n```\n"
    )
    assert [b.split(" ")[0] for b in broken_links(page)] == ["missing.md", "#nowhere"]


def test_pages_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/results.md", "docs/data.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = broken_links(page)
    assert not broken, f"{shown(page)} links to missing targets:\n  " + "\n  ".join(broken)


def test_readme_is_a_short_front_page():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 150, f"README.md has {n} lines; move detail to docs/"


def test_readme_table_rows_are_quoted_from_the_latest_run():
    """The README's excerpt of Table 1 is copied line for line from the snapshot it links."""
    snapshot = set((ROOT / "results" / "latest" / "table1.md").read_text().splitlines())
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) >= 4, "no Table 1 excerpt in README.md"
    table1_rows = [r for r in rows if r.startswith(("| Network", "| Student", "| Teacher", "| **KD"))]
    assert table1_rows, "no Table 1 rows in README.md"
    stale = [r for r in table1_rows if r not in snapshot]
    assert not stale, "README rows not in results/latest/table1.md:\n" + "\n".join(stale)


def test_readme_main_job_builds_the_robustness_table_it_promises():
    """The main job is the default target, and the default target includes the robustness table."""
    readme = (ROOT / "README.md").read_text()
    main_job = re.search(r"^python3\.11 -m venv .+ && (snakemake [^\n]*)$", readme, flags=re.M)
    assert main_job, "no main-job command in README.md"
    assert main_job.group(1).split() == ["snakemake", "--cores", "all"], main_job.group(1)
    assert "robustness" in readme[: main_job.start()], "README does not say the main job builds the robustness table"
    reg = Registry.from_file(ROOT / "params.yaml")
    targets = set(reg.targets())
    assert {reg.table("csv"), reg.table("md"), reg.robustness("csv"), reg.robustness("md")} <= targets
