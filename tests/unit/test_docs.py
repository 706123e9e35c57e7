"""Documentation generated from the code stays in step with it."""

from __future__ import annotations

from pathlib import Path

from crm.docs import settings_table
from shared.asyncapi import rendered
from shared.topics import TOPIC_SPECS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_configuration_table_matches_the_settings_classes() -> None:
    start = README.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = README.index("<!-- settings-table:end -->")
    assert README[start:end].strip() == settings_table().strip(), (
        "README's configuration table is stale: paste the output of `python -m crm.docs`"
    )


def test_contract_configuration_variables_are_all_documented() -> None:
    contract = [
        "CRM_KAFKA_BOOTSTRAP", "CRM_STORE_URL", "CRM_SMTP_HOST", "CRM_SMTP_PORT", "CRM_OUTBOX_DIR",
        "CRM_CARD_KEY", "CRM_TIMEZONE", "CRM_QUIET_HOURS", "CRM_HTTP_PORT", "CRM_API_TOKENS",
        "CRM_CREATE_TOPICS",
    ]  # fmt: skip
    table = settings_table()
    assert [name for name in contract if f"`{name}`" not in table] == []


def test_committed_asyncapi_and_json_schemas_are_what_the_code_generates() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in rendered(ROOT).items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert stale == [], "regenerate with `python -m shared.asyncapi`"


def test_asyncapi_documents_every_topic() -> None:
    import json

    document = json.loads((ROOT / "docs" / "asyncapi.json").read_text(encoding="utf-8"))
    assert set(document["channels"]) == {spec.name for spec in TOPIC_SPECS}


def test_readme_quick_start_is_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    block = quick.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
