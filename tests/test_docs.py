"""The plugin docs stay true: every hook is documented, and the walkthrough is the real package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from framework import hookspecs
from framework.resolvers import ROOT_DIR

PLUGINS_MD = ROOT_DIR / "docs" / "plugins.md"
EXAMPLE = ROOT_DIR / "examples" / "plugins" / "tunesmith-example"

HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("tunesmith_"))


def _sections() -> dict[str, str]:
    """``{hook name: its section text}`` for every ``### `tunesmith_...``` heading."""
    text = PLUGINS_MD.read_text(encoding="utf-8")
    parts = re.split(r"^### `(tunesmith_\w+)`\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    assert hook in _sections(), (
        f"{hook} is in framework/hookspecs.py but has no '### `{hook}`' section in "
        "docs/plugins.md: say when it is called, its arguments, what it returns and whether "
        "it is single-owner (first result wins) or fan-out."
    )


def test_no_documented_hook_is_gone() -> None:
    gone = set(_sections()) - set(HOOKS)
    assert not gone, f"docs/plugins.md documents hooks that no longer exist: {sorted(gone)}"


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_section_says_when_arguments_returns_and_kind(hook: str) -> None:
    section = _sections().get(hook, "")
    for part in ("**When:**", "**Arguments:**", "**Returns:**", "**Kind:**"):
        assert part in section, f"{hook}: the section needs {part}"
    spec = getattr(getattr(hookspecs, hook), "tunesmith_spec", {})
    kind = section.split("**Kind:**", 1)[1].splitlines()[0]
    if spec.get("firstresult"):
        assert "single-owner" in kind and "first result wins" in kind, hook
    else:
        assert "fan-out" in kind, hook


def _walkthrough_files() -> dict[str, str]:
    text = PLUGINS_MD.read_text(encoding="utf-8")
    blocks = re.findall(
        r"<!-- file: (\S+) -->\n```\w*\n(.*?)```\n", text, flags=re.DOTALL | re.MULTILINE
    )
    return dict(blocks)


def test_walkthrough_shows_the_example_package_exactly() -> None:
    shown = _walkthrough_files()
    assert shown, "the walkthrough marks its files with <!-- file: path --> comments"
    for rel, content in shown.items():
        path = ROOT_DIR / rel
        assert path.is_file(), f"docs/plugins.md shows {rel}, which does not exist"
        assert path.read_text(encoding="utf-8") == content, (
            f"docs/plugins.md and {rel} differ: update the walkthrough with the file"
        )


def test_walkthrough_covers_every_file_that_matters() -> None:
    shown = {Path(p) for p in _walkthrough_files()}
    package = [
        p.relative_to(ROOT_DIR)
        for p in EXAMPLE.rglob("*")
        if p.is_file()
        and p.suffix in {".py", ".yaml", ".toml"}
        and p.name != "__init__.py"
        and "build" not in p.parts
    ]
    missing = sorted(str(p) for p in package if p not in shown)
    assert not missing, f"the walkthrough in docs/plugins.md does not show {missing}"
