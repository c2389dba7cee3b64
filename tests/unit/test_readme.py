from pathlib import Path

from cancelflow.settings_doc import table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_is_generated_from_the_settings_classes():
    text = README.read_text()
    assert table() in text, "regenerate: python -m cancelflow.settings_doc, paste into README.md"


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("\n## ")[0]
    assert "./scripts/run" in head and "./scripts/test" in head
