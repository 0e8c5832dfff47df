"""The front page and the docs site stay what they promise: a short README without dated lab
notes, links that resolve, nothing pointing outside the repository, and a config reference
generated from the schema (``mkdocs build --strict`` in CI checks the site's own links)."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = re.compile(r"<!-- (bench[\w-]*):([\w-]+) -->.*?<!-- /\1:\2 -->", re.DOTALL)


def _prose(path: Path) -> str:
    """The hand-written text of a page: generated blocks left out."""
    return GENERATED.sub("", path.read_text())


def test_readme_is_a_short_front_page_without_dated_measurements():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", _prose(readme))


@pytest.mark.parametrize("page", ["README.md", "BENCHMARKS.md", "CHANGELOG.md",
                                  *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))])
def test_relative_links_resolve_and_nothing_points_outside_the_repository(page):
    path = ROOT / page
    text = path.read_text()
    # a relative path in the text, linked or not, names a file of the repository: from this
    # page, or from a folder deeper in it (a suite's `base: ../../configs/...`)
    for target in re.findall(r"(?:\.\./)+[\w./-]*[\w/]", text):
        here = (path.parent / target).resolve()
        named = ROOT / re.sub(r"^(?:\.\./)+", "", target)
        assert (ROOT in here.parents and here.exists()) or named.exists(), \
            f"{page} points at {target}, which is no file of the repository"
    for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.exists(), f"{page} links {target}, which does not exist"
        assert ROOT in resolved.parents or resolved == ROOT, f"{page} links outside: {target}"


def test_the_config_reference_lists_every_key_of_the_schema():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    from fedsparse.config import ExperimentConfig

    page = hooks.on_page_markdown("before\n<!-- config-schema -->\nafter", page=None)
    assert "<!-- config-schema -->" not in page
    for name in ExperimentConfig.model_fields:
        assert f"`{name}`" in page or f"`{name}." in page, name
    assert "`method.pfedgate.split`" in page and "`simulation.round_timeout`" in page
    assert "`train.lr`" in page
