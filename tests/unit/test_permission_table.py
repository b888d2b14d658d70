"""The README's permission table is the one in `services/access/roles.py`."""

from __future__ import annotations

import re
from pathlib import Path

from services.access.roles import PERMISSIONS, Role


def test_the_readme_shows_the_permission_table_that_is_enforced() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    header = "| action | " + " | ".join(role.value for role in Role) + " |"
    assert header in readme
    shown: dict[str, frozenset[Role]] = {}
    for line in readme[readme.index(header) :].splitlines()[2:]:
        match = re.match(r"\| `([a-z_.]+)` \|(.*)\|$", line)
        if not match:
            break
        cells = [cell.strip() for cell in match.group(2).split("|")]
        shown[match.group(1)] = frozenset(r for r, c in zip(Role, cells, strict=True) if c == "✓")
    assert shown == PERMISSIONS
