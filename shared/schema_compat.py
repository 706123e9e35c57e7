"""Whether a topic's new JSON Schema may follow the last release's: FULL compatibility.

A schema registry's FULL mode asks two things of a new schema: consumers on the new schema read
what the old one allowed (backward), and consumers on the old schema read what the new one
allows (forward). crm-stream's producers publish closed schemas (`additionalProperties: false`)
and its consumers ignore fields they do not know, so the question is asked of that pair (a
closed writer, an open reader): adding an optional field passes both ways; removing a field,
retyping or narrowing one, making one required, or changing a `const` breaks one way or both.
A field marked `deprecated` in the old schema (and optional there) may go: that is the second
of the two releases a removal takes.

Written here because no well-kept library answers it for this pair: jsoncompat, the one
semantic checker on PyPI, installs on Python 3.11 only in an older version that ignores
`pattern`, finds an identical discriminated union incompatible once opened, and answers yes or
no without naming the field. This module understands what pydantic generates (objects, `$ref`,
`anyOf`/`oneOf`, `enum`/`const`, arrays, bounds) and calls anything else that differs a break.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Schema = Mapping[str, Any]
Direction = Literal["backward", "forward", "both"]
"""Which readers a change breaks: `backward` new readers of old data, `forward` old readers of
new data."""

ANNOTATIONS: Final = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "$comment",
        "readOnly",
        "writeOnly",
        "discriminator",  # OpenAPI's hint; the branches themselves are compared
        "$defs",
        "definitions",
    }
)
"""Keywords that do not change which documents a schema accepts. A `default` is among them:
producers write every field, so a default only fills records older than the field."""
LOWER_BOUNDS: Final = frozenset(
    {"minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties"}
)
UPPER_BOUNDS: Final = frozenset(
    {"maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties"}
)
HANDLED: Final = frozenset(
    {
        "$ref",
        "type",
        "format",
        "anyOf",
        "oneOf",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
    }
)


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One change that breaks a schema registry's FULL compatibility."""

    schema: str
    """The schema (a file's name, a topic) it was found in."""
    path: str
    """Where: property names joined by dots, `[]` for array items, `{}` for map values."""
    kind: str
    """`removed`, `required_added`, `now_required`, `now_optional`, `retyped`, `narrowed`,
    `widened`, `enum_narrowed`, `enum_widened`, `const_changed`, `added_to_open_model`,
    `content_model_changed`, `constraint_changed`, `changed`, `schema_removed`."""
    breaks: Direction
    detail: str

    def __str__(self) -> str:
        breaks = "backward and forward" if self.breaks == "both" else self.breaks
        return (
            f"{self.schema}: {self.path or '(root)'}: {self.detail} "
            f"({self.kind}: breaks {breaks} compatibility)"
        )


def incompatibilities(
    old: Schema,
    new: Schema,
    *,
    name: str = "schema",
    old_root: Schema | None = None,
    new_root: Schema | None = None,
) -> list[Incompatibility]:
    """Every change from `old` to `new` that a FULL compatibility check refuses. `$ref`s are
    resolved in `old_root` and `new_root` (the schemas themselves by default)."""
    comparison = _Comparison(name, old_root or old, new_root or new)
    comparison.compare(old, new, "")
    return comparison.found


def check_release(
    release: Mapping[str, Schema], current: Mapping[str, Schema]
) -> list[Incompatibility]:
    """Every schema of a release against the current one of the same name; a schema the
    current code no longer has is a break too (a new one is not)."""
    found: list[Incompatibility] = []
    for name, old in sorted(release.items()):
        new = current.get(name)
        if new is None:
            found.append(
                Incompatibility(name, "", "schema_removed", "forward", "the schema is gone")
            )
            continue
        found.extend(incompatibilities(old, new, name=name))
    return found


def channel_payloads(asyncapi: Schema) -> dict[str, Schema]:
    """Each channel of an AsyncAPI 3 document -> the schema of its messages' payloads (one of
    them when there are several), its `$ref`s pointing into the document."""
    payloads: dict[str, Schema] = {}
    for channel, spec in asyncapi.get("channels", {}).items():
        found = [
            _resolve(asyncapi, message)["payload"] for message in spec.get("messages", {}).values()
        ]
        payloads[channel] = found[0] if len(found) == 1 else {"anyOf": found}
    return payloads


def check_asyncapi(release: Schema, current: Schema) -> list[Incompatibility]:
    """Every channel's payload of a release's AsyncAPI document against the current one's; a
    channel the current document no longer has is a break too."""
    old_channels = channel_payloads(release)
    new_channels = channel_payloads(current)
    found: list[Incompatibility] = []
    for channel, old in sorted(old_channels.items()):
        new = new_channels.get(channel)
        if new is None:
            found.append(
                Incompatibility(channel, "", "schema_removed", "forward", "the channel is gone")
            )
            continue
        found.extend(incompatibilities(old, new, name=channel, old_root=release, new_root=current))
    return found


# ---------------------------------------------------------------- the comparison


def _resolve(root: Schema, node: Schema) -> Schema:
    """`node` with its `$ref` (a JSON pointer into `root`) replaced by what it points to; the
    node's own keywords (a description beside the `$ref`) are kept."""
    seen: set[str] = set()
    while "$ref" in node:
        ref = str(node["$ref"])
        if not ref.startswith("#/") or ref in seen:
            raise ValueError(f"cannot resolve $ref {ref!r}")
        seen.add(ref)
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _ref_of(node: Schema) -> str | None:
    ref = node.get("$ref")
    return str(ref) if ref is not None else None


def _values(node: Schema) -> frozenset[str] | None:
    """The values `enum` or `const` allow (as JSON text), None when neither constrains it."""
    if "const" in node:
        return frozenset({json.dumps(node["const"], sort_keys=True)})
    if "enum" in node:
        return frozenset(json.dumps(v, sort_keys=True) for v in node["enum"])
    return None


def _branches(root: Schema, node: Schema) -> Iterator[tuple[str, Schema]]:
    """The alternatives of a union (`anyOf`, `oneOf`), each under a key that pairs it with the
    same alternative in the other schema; a schema that is no union is its one branch."""
    union = node.get("anyOf", node.get("oneOf"))
    if union is None or ("anyOf" in node and "oneOf" in node):
        yield _key(root, node), node
        return
    shared = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
    counts: dict[str, int] = {}
    for branch in union:
        for key, leaf in _branches(root, {**shared, **branch}):
            counts[key] = counts.get(key, 0) + 1
            yield (key if counts[key] == 1 else f"{key}#{counts[key]}"), leaf


def _key(root: Schema, node: Schema) -> str:
    """What kind of value a schema that is no union accepts: its type and format; for an
    object, the `type` const that tells events apart, else its title."""
    target = _resolve(root, node)
    kind = target.get("type")
    if kind is None and "properties" in target:
        kind = "object"
    if kind is None:
        return "const" if "const" in target else ("enum" if "enum" in target else "any")
    if isinstance(kind, list):
        kind = "|".join(str(k) for k in kind)
    if kind == "object":
        tag = target.get("properties", {}).get("type", {})
        label = None
        if isinstance(tag, Mapping):
            label = tag.get("const", "|".join(str(v) for v in tag.get("enum", ())) or None)
        label = label if label is not None else target.get("title")
        return f"object {label}" if label is not None else "object"
    return f"{kind} ({target['format']})" if "format" in target else str(kind)


def _is_object(key: str) -> bool:
    return key == "object" or key.startswith("object ")


def _join(path: str, step: str) -> str:
    if step in ("[]", "{}") or (step.startswith("(") and not path):
        return f"{path}{step}"
    return f"{path}.{step}" if path else step


class _Comparison:
    def __init__(self, name: str, old_root: Schema, new_root: Schema) -> None:
        self.name = name
        self.old_root = old_root
        self.new_root = new_root
        self.found: list[Incompatibility] = []
        self._seen: set[tuple[str, str]] = set()

    def _break(self, path: str, kind: str, breaks: Direction, detail: str) -> None:
        self.found.append(Incompatibility(self.name, path, kind, breaks, detail))

    def compare(self, old: Schema, new: Schema, path: str) -> None:
        old_ref, new_ref = _ref_of(old), _ref_of(new)
        if old_ref is not None and new_ref is not None:
            if (old_ref, new_ref) in self._seen:  # a recursive schema: compared already
                return
            self._seen.add((old_ref, new_ref))
        old = _resolve(self.old_root, old)
        new = _resolve(self.new_root, new)
        old_branches = dict(_branches(self.old_root, old))
        new_branches = dict(_branches(self.new_root, new))
        if len(old_branches) == 1 and len(new_branches) == 1:
            (old_key, old_one), (new_key, new_one) = *old_branches.items(), *new_branches.items()
            # Two objects are compared field by field, whatever their titles or `type` consts.
            if old_key != new_key and not (_is_object(old_key) and _is_object(new_key)):
                self._break(path, "retyped", "both", f"was {old_key}, is {new_key}")
                return
            self._compare_one(old_one, new_one, path)
            return
        for key in old_branches.keys() - new_branches.keys():
            self._break(path, "narrowed", "backward", f"no longer accepts {key}")
        for key in new_branches.keys() - old_branches.keys():
            self._break(path, "widened", "forward", f"now also accepts {key}")
        # The alternatives of a topic's events are told apart in the path; a nullable is not.
        named = len([key for key in old_branches if key != "null"]) > 1
        for key in sorted(old_branches.keys() & new_branches.keys()):
            where = _join(path, f"({key.removeprefix('object ')})") if named else path
            self.compare(old_branches[key], new_branches[key], where)

    def _compare_one(self, old: Schema, new: Schema, path: str) -> None:
        self._compare_values(old, new, path)
        self._compare_bounds(old, new, path)
        if "properties" in old or "properties" in new or old.get("type") == "object":
            self._compare_object(old, new, path)
        if "items" in old or "items" in new:
            self.compare(old.get("items", {}), new.get("items", {}), _join(path, "[]"))
        old_prefix, new_prefix = old.get("prefixItems", []), new.get("prefixItems", [])
        if len(old_prefix) != len(new_prefix):
            self._break(path, "changed", "both", "the tuple's length changed")
        for index, (old_item, new_item) in enumerate(zip(old_prefix, new_prefix, strict=False)):
            self.compare(old_item, new_item, _join(path, str(index)))
        ignored = ANNOTATIONS | HANDLED | LOWER_BOUNDS | UPPER_BOUNDS
        for keyword in sorted((old.keys() | new.keys()) - ignored):
            if old.get(keyword) != new.get(keyword):
                self._break(
                    path,
                    "constraint_changed",
                    "both",
                    f"`{keyword}` changed from {old.get(keyword)!r} to {new.get(keyword)!r}",
                )

    def _compare_values(self, old: Schema, new: Schema, path: str) -> None:
        old_values, new_values = _values(old), _values(new)
        if old_values == new_values:
            return
        if old_values is not None and new_values is not None:
            if len(old_values) == 1 and len(new_values) == 1:
                self._break(
                    path,
                    "const_changed",
                    "both",
                    f"was {next(iter(old_values))}, is {next(iter(new_values))}",
                )
                return
            if removed := sorted(old_values - new_values):
                self._break(path, "enum_narrowed", "backward", f"lost {', '.join(removed)}")
            if added := sorted(new_values - old_values):
                self._break(path, "enum_widened", "forward", f"gained {', '.join(added)}")
        elif new_values is not None:
            self._break(path, "enum_narrowed", "backward", "now limited to listed values")
        else:
            self._break(path, "enum_widened", "forward", "no longer limited to listed values")

    def _compare_bounds(self, old: Schema, new: Schema, path: str) -> None:
        for keyword in sorted(LOWER_BOUNDS | UPPER_BOUNDS):
            before, after = old.get(keyword), new.get(keyword)
            if before == after:
                continue
            lower = keyword in LOWER_BOUNDS
            if before is None:
                tighter = True
            elif after is None:
                tighter = False
            else:
                tighter = after > before if lower else after < before
            self._break(
                path,
                "narrowed" if tighter else "widened",
                "backward" if tighter else "forward",
                f"`{keyword}` {before!r} -> {after!r}",
            )

    def _compare_object(self, old: Schema, new: Schema, path: str) -> None:
        old_props: Mapping[str, Schema] = old.get("properties", {})
        new_props: Mapping[str, Schema] = new.get("properties", {})
        old_required = set(old.get("required", ()))
        new_required = set(new.get("required", ()))
        old_extra = old.get("additionalProperties", True)
        new_extra = new.get("additionalProperties", True)
        for prop in sorted(old_props.keys() - new_props.keys()):
            where = _join(path, prop)
            deprecated = bool(_resolve(self.old_root, old_props[prop]).get("deprecated"))
            if deprecated and prop not in old_required:
                continue  # removed in the release after the one that deprecated it
            self._break(
                where,
                "removed",
                "forward",
                "removed (deprecate it first, optional, for one release)",
            )
        for prop in sorted(new_props.keys() - old_props.keys()):
            where = _join(path, prop)
            if prop in new_required:
                self._break(where, "required_added", "backward", "new and required")
            elif old_extra is not False:
                self._break(
                    where,
                    "added_to_open_model",
                    "backward",
                    "added where any field was allowed: old data may hold it with another type",
                )
        for prop in sorted(old_props.keys() & new_props.keys()):
            where = _join(path, prop)
            if prop in new_required and prop not in old_required:
                self._break(where, "now_required", "backward", "was optional, is required")
            if prop in old_required and prop not in new_required:
                self._break(where, "now_optional", "forward", "was required, is optional")
            self.compare(old_props[prop], new_props[prop], where)
        self._compare_extra(old_extra, new_extra, path)

    def _compare_extra(self, old: Any, new: Any, path: str) -> None:
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            self.compare(old, new, _join(path, "{}"))
        elif isinstance(old, bool) and isinstance(new, bool):
            if old != new:
                self._break(
                    path,
                    "content_model_changed",
                    "both",
                    f"`additionalProperties` {old!r} -> {new!r}",
                )
        elif old != new:
            self._break(
                path, "content_model_changed", "both", "`additionalProperties` changed kind"
            )
