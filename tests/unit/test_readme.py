"""The README stays true to the code: its configuration table lists every setting with its
default, and the commands it names exist."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from stream.settings import Secret, Settings

pytestmark = pytest.mark.unit

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _config_table() -> dict[str, str]:
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(r"^\| `PROFILES_(\w+)` \| (.*?) \|", section, flags=re.M)}


def test_the_configuration_table_lists_every_setting_with_its_default() -> None:
    table = _config_table()
    names = {f.name.upper(): f for f in fields(Settings)}
    assert set(table) == set(names), (set(names) - set(table), set(table) - set(names))
    for name, cell in table.items():
        default = names[name].default
        if isinstance(default, Secret):
            assert cell == "(secret, empty)", name
        else:
            assert cell == f"`{default}`", (name, cell, default)


def test_the_readme_names_the_make_targets_ci_runs() -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    for target in ("demo", "check", "test", "lint", "typecheck"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "make check" in (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make check   # test" in README
