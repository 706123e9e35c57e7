"""Every topic's JSON Schema stays FULL compatible with the last release's (the schemas copied
into docs/schemas/releases/<version>/ when it was cut), and the checker catches each kind of
breaking change while it lets an optional field in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.asyncapi import asyncapi_document, json_schemas
from shared.schema_compat import (
    Incompatibility,
    check_asyncapi,
    check_release,
    incompatibilities,
)

ROOT = Path(__file__).resolve().parents[2]
RELEASES = ROOT / "docs" / "schemas" / "releases"

ACCEPTED: dict[tuple[str, str, str], str] = {
    ("clock", "schema_version", "added_to_open_model"): (
        "crm.clock is open (the contract's scheduler may send more), but its writers, `crm "
        "tick` and the scheduler the contract describes, send `date` alone: no clock record "
        "holds a `schema_version` of another type"
    ),
    ("crm.clock", "schema_version", "added_to_open_model"): "the same change, in AsyncAPI",
}
"""Breaks a reviewer checked and accepted since the last release, each with the reason. The
entries go when the next release is cut (its schemas already hold the change)."""


def version(folder: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in folder.name.split("."))


def last_release() -> Path:
    return max((f for f in RELEASES.iterdir() if f.is_dir()), key=version)


def read(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def found_since_last_release() -> list[Incompatibility]:
    release = last_release()
    schemas = {
        path.name.removesuffix(".schema.json"): read(path)
        for path in sorted(release.glob("*.schema.json"))
    }
    found = check_release(schemas, json_schemas())
    found += check_asyncapi(read(release / "asyncapi.json"), asyncapi_document())
    return found


def test_every_schema_is_full_compatible_with_the_last_release() -> None:
    breaks = [
        str(item)
        for item in found_since_last_release()
        if (item.schema, item.path, item.kind) not in ACCEPTED
    ]

    assert breaks == [], (
        f"not FULL compatible with release {last_release().name} (the rule: docs/operate.md, "
        "Upgrading):\n" + "\n".join(breaks)
    )


def test_every_accepted_break_is_still_there_to_accept() -> None:
    found = {(item.schema, item.path, item.kind) for item in found_since_last_release()}

    assert [key for key in ACCEPTED if key not in found] == []


def test_the_last_release_is_snapshotted_with_its_asyncapi_document() -> None:
    release = last_release()

    assert (release / "asyncapi.json").is_file()
    assert sorted(release.glob("*.schema.json"))


# ---------------------------------------------------------------- the checker, on pydantic models


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str
    quantity: int


class Offer(BaseModel):
    """Version 1: the schema each change below is checked against."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["offer_issued"] = "offer_issued"
    offer_id: str
    kind: Literal["birthday", "frequent_item"]
    code: str
    sku: str | None = None
    lines: tuple[Line, ...] = ()


def changes(new: type[BaseModel], old: type[BaseModel] = Offer) -> list[tuple[str, str, str]]:
    found = incompatibilities(old.model_json_schema(), new.model_json_schema(), name="offer")
    return [(item.path, item.kind, item.breaks) for item in found]


def test_an_optional_field_added_is_compatible_both_ways() -> None:
    class LineV2(Line):
        discount: int = 0

    class OfferV2(Offer):
        channel: str | None = None
        lines: tuple[LineV2, ...] = ()

    assert changes(OfferV2) == []


def test_the_same_schema_is_compatible_with_itself() -> None:
    assert changes(Offer) == []


def test_a_removed_field_breaks_old_readers() -> None:
    schema = Offer.model_json_schema()
    del schema["properties"]["sku"]

    found = incompatibilities(Offer.model_json_schema(), schema)

    assert [(i.path, i.kind, i.breaks) for i in found] == [("sku", "removed", "forward")]


def test_a_field_deprecated_in_the_last_release_may_be_removed() -> None:
    class Deprecated(Offer):
        sku: str | None = Field(default=None, deprecated="read `lines` instead")

    schema = Offer.model_json_schema()
    del schema["properties"]["sku"]

    assert incompatibilities(Deprecated.model_json_schema(), schema) == []


def test_a_retyped_field_breaks_both_ways() -> None:
    class OfferV2(Offer):
        offer_id: int  # type: ignore[assignment]

    assert changes(OfferV2) == [("offer_id", "retyped", "both")]


def test_a_retyped_field_of_a_nested_object_is_found_where_it_is() -> None:
    class LineV2(Line):
        quantity: str  # type: ignore[assignment]

    class OfferV2(Offer):
        lines: tuple[LineV2, ...] = ()

    assert changes(OfferV2) == [("lines[].quantity", "retyped", "both")]


def test_a_new_required_field_breaks_new_readers_of_old_data() -> None:
    class OfferV2(Offer):
        store_id: str

    assert changes(OfferV2) == [("store_id", "required_added", "backward")]


def test_an_optional_field_made_required_breaks_new_readers_of_old_data() -> None:
    class OfferV2(Offer):
        sku: str | None

    assert changes(OfferV2) == [("sku", "now_required", "backward")]


def test_a_field_no_longer_nullable_is_narrowed() -> None:
    class OfferV2(Offer):
        sku: str = ""

    assert changes(OfferV2) == [("sku", "narrowed", "backward")]


def test_an_enum_value_removed_breaks_new_readers_of_old_data() -> None:
    class OfferV2(Offer):
        kind: Literal["birthday"]

    assert changes(OfferV2) == [("kind", "enum_narrowed", "backward")]


def test_an_enum_value_added_breaks_old_readers() -> None:
    class OfferV2(Offer):
        kind: Literal["birthday", "frequent_item", "win_back"]  # type: ignore[assignment]

    assert changes(OfferV2) == [("kind", "enum_widened", "forward")]


def test_a_changed_const_breaks_both_ways() -> None:
    class OfferV2(Offer):
        type: Literal["offer_made"] = "offer_made"  # type: ignore[assignment]

    assert changes(OfferV2) == [("type", "const_changed", "both")]


def test_a_tighter_bound_or_a_new_pattern_is_found() -> None:
    class OfferV2(Offer):
        code: Annotated[str, Field(max_length=8, pattern=r"^[A-Z0-9]+$")]

    assert changes(OfferV2) == [
        ("code", "narrowed", "backward"),
        ("code", "constraint_changed", "both"),
    ]


class Expired(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["offer_expired"] = "offer_expired"
    offer_id: str


class Redeemed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["offer_redeemed"] = "offer_redeemed"
    offer_id: str


OneKind = Annotated[Offer, Field(discriminator="type")]
TwoKinds = Annotated[Offer | Expired, Field(discriminator="type")]
ThreeKinds = Annotated[Offer | Expired | Redeemed, Field(discriminator="type")]


def union_changes(old: Any, new: Any) -> list[tuple[str, str]]:
    found = incompatibilities(TypeAdapter(old).json_schema(), TypeAdapter(new).json_schema())
    return [(i.kind, i.breaks) for i in found]


def test_a_topic_keeps_the_event_types_it_had() -> None:
    assert union_changes(TwoKinds, TwoKinds) == []
    assert union_changes(TwoKinds, OneKind) == [("narrowed", "backward")]


def test_a_new_event_type_on_a_topic_breaks_old_readers() -> None:
    assert union_changes(TwoKinds, ThreeKinds) == [("widened", "forward")]


def test_a_field_added_to_an_open_model_may_clash_with_what_old_data_holds() -> None:
    class Raw(BaseModel):
        model_config = ConfigDict(extra="ignore")
        event_id: str

    class RawV2(Raw):
        store_id: str | None = None

    assert changes(RawV2, old=Raw) == [("store_id", "added_to_open_model", "backward")]


def test_a_schema_of_the_release_that_is_gone_is_a_break() -> None:
    schema = Offer.model_json_schema()

    found = check_release({"offer": schema, "clock": schema}, {"offer": schema})

    assert [(i.schema, i.kind) for i in found] == [("clock", "schema_removed")]


@pytest.mark.parametrize("keyword", ["minimum", "maximum"])
def test_a_bound_relaxed_is_a_widening(keyword: str) -> None:
    tight = {"type": "integer", keyword: 5}
    loose = {"type": "integer", keyword: 0 if keyword == "minimum" else 10}

    assert [(i.kind, i.breaks) for i in incompatibilities(tight, loose)] == [("widened", "forward")]
