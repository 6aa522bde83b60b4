"""The README documents every resource field, as the models define them."""

from __future__ import annotations

from pathlib import Path

from kubestep.api.reference import BEGIN, END, render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_reference_is_generated_from_the_current_models() -> None:
    text = README.read_text()
    generated = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert generated.strip() == render().strip(), "run `make docs` to update the README"


def test_every_field_has_a_description() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) > 60
    undocumented = [row.split("|")[1].strip() for row in rows if not row.rstrip(" |").split("|")[-1].strip()]
    assert undocumented == []
