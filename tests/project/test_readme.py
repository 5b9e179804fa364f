"""The docs stay true: every setting is documented with its real default, the README stays
short, and every relative link in the README and docs/ resolves."""

import re
from pathlib import Path

from app.settings import Settings
from app.settings_doc import render

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SETTINGS_DOC = (ROOT / "docs" / "settings.md").read_text()


def _rows() -> dict[str, str]:
    """Settings-table rows by variable name: ``| `SEENN_X` | `default` | meaning |``."""
    rows = {}
    for line in SETTINGS_DOC.splitlines():
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
        assert variable in rows, f"{variable} is missing from the docs/settings.md table"
        default = rows[variable].strip("`").replace(",", "").replace("_", "")
        assert default == _shown(field.default).replace("_", ""), (
            f"{variable}: docs/settings.md says {rows[variable]!r}, code says {field.default!r}"
        )


def test_no_documented_setting_is_unknown():
    known = {f"SEENN_{name.upper()}" for name in Settings.model_fields}
    unknown = {v for v in _rows() if v not in known and not v.startswith("SEENN_TEST_")}
    assert not unknown, f"docs/settings.md documents settings the server does not read: {unknown}"


def test_settings_doc_is_generated_from_settings():
    assert SETTINGS_DOC == render(), (
        "docs/settings.md is stale: run `python -m app.settings_doc > docs/settings.md`"
    )


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size < 8 * 1024, f"README.md is {size} bytes; keep it under 8 KB (move detail to docs/)"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (match := re.match(r"#{1,6} (.+)", line)):
            anchors.add(_slug(match.group(1)))
    return anchors


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_relative_links_resolve():
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for link in _links(page):
            if re.match(r"[a-z]+:", link):
                continue
            target, _, anchor = link.partition("#")
            file = (page.parent / target).resolve() if target else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
