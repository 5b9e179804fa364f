"""The README stays true: every setting is in its table with its real default."""

import re
from pathlib import Path

from app.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _rows() -> dict[str, str]:
    """Settings-table rows by variable name: ``| `SEENN_X` | `default` | meaning |``."""
    rows = {}
    for line in README.splitlines():
        match = re.match(r"\|\s*`(SEENN_[A-Z0-9_]+)`[^|]*\|\s*([^|]*)\|", line)
        if match:
            rows.setdefault(match.group(1), match.group(2).strip())
    return rows


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_documented_with_its_default():
    rows = _rows()
    for name, field in Settings.model_fields.items():
        variable = f"SEENN_{name.upper()}"
        assert variable in rows, f"{variable} is missing from the README settings table"
        default = rows[variable].strip("`").replace(",", "").replace("_", "")
        assert default == _shown(field.default).replace("_", ""), (
            f"{variable}: README says {rows[variable]!r}, code says {field.default!r}"
        )


def test_no_documented_setting_is_unknown():
    known = {f"SEENN_{name.upper()}" for name in Settings.model_fields}
    unknown = {v for v in _rows() if v not in known and not v.startswith("SEENN_TEST_")}
    assert not unknown, f"README documents settings the server does not read: {unknown}"
