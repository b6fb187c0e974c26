"""The tag-file example a newcomer copies from the docs must load as written."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from twin.spec import ProcessSpec

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_documented_tag_file_loads() -> None:
    text = (DOCS / "processes.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "docs/processes.md has no yaml example"
    spec = ProcessSpec.from_dict(yaml.safe_load(block.group(1)), source="docs/processes.md")
    assert spec.name == "my_reactor"
    assert [t.name for t in spec.actuators] == ["Tc"]


def test_the_readme_tag_file_loads() -> None:
    text = (DOCS.parent / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "README.md has no yaml example"
    spec = ProcessSpec.from_dict(yaml.safe_load(block.group(1)), source="README.md")
    assert [t.name for t in spec.tags if t.controlled] == ["T"]


def test_the_architecture_page_names_files_that_exist() -> None:
    root = DOCS.parent
    text = (DOCS / "architecture.md").read_text()
    named = set(re.findall(r"`((?:twin|api|processes|dashboards)/[\w/]+\.py)`", text))
    assert named, "docs/architecture.md names no files"
    missing = sorted(p for p in named if not (root / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
