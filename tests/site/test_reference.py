"""The README's site-file reference is generated from the model and must be current."""

from __future__ import annotations

from crate_deploy.site.load import load_site
from crate_deploy.site.model import Site
from crate_deploy.site.reference import END, START, markdown_reference
from tests.conftest import EXAMPLES, ROOT


def test_readme_reference_is_current() -> None:
    """Regenerate with scripts/update-docs."""
    text = (ROOT / "README.md").read_text()
    section = START + text.split(START, 1)[1].split(END, 1)[0] + END + "\n"
    assert section == markdown_reference(load_site(EXAMPLES / "site.yaml").data)


def test_reference_lists_every_key() -> None:
    table = markdown_reference()
    for name in Site.model_fields:
        assert f"| `{name}` |" in table
    assert "| `workers[].time_limit` |" in table
    assert "| `beat.schedule[].cron.hour` |" in table
