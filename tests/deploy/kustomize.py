"""A small offline renderer for the subset of Kustomize that deploy/k8s uses.

Written by hand because no maintained PyPI package renders a kustomization
offline on Python 3.11: `pykustomize` needs Python 3.14, and the `kustomize`
package builds manifests from Python code instead of reading kustomization.yaml.
`kubectl kustomize`, where installed, stays the reference: a test compares the
two renderings.

Supported, and nothing more (anything else raises, so that a new feature in the
manifests fails loudly here instead of rendering wrong):
- `resources`: YAML files and directories holding a kustomization;
- `namespace`;
- `labels` with `pairs` (metadata labels only: no selectors, no templates);
- `images` (`newName`, `newTag`, `digest`);
- `patches`: strategic merge patches from `path` or inline `patch`, matched by
  kind and name or by a `target` of `kind` and `name` (a regular expression),
  including `$patch: delete`. Lists merge by key for containers, env, volumes
  and volume mounts, as Kubernetes' strategic merge does; other lists are
  replaced.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "render"]

Resource = dict[str, Any]

_KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"}
_CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
}
# Merge keys of the lists that the manifests patch (from the Kubernetes API's
# x-kubernetes-patch-merge-key); any other list is replaced by the patch's.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}


class KustomizeError(ValueError):
    """A kustomization uses a feature this renderer does not support, or is wrong."""


def render(directory: Path) -> list[Resource]:
    """Render the kustomization in `directory` into a list of resources."""
    kustomization = _load_kustomization(directory)
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(render(path))
        elif path.is_file():
            resources.extend(_load_documents(path))
        else:
            raise KustomizeError(f"{directory}: resource {entry!r} not found")
    for patch in kustomization.get("patches", []):
        resources = _apply_patch(directory, patch, resources)
    if "namespace" in kustomization:
        _set_namespace(resources, kustomization["namespace"])
    for entry in kustomization.get("labels", []):
        _add_labels(resources, entry)
    for image in kustomization.get("images", []):
        for resource in resources:
            _set_image(resource, image)
    return resources


def _load_kustomization(directory: Path) -> dict[str, Any]:
    for name in _KUSTOMIZATION_NAMES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            unsupported = set(data) - _SUPPORTED_FIELDS
            if unsupported:
                raise KustomizeError(f"{path}: unsupported fields {sorted(unsupported)}")
            return data
    raise KustomizeError(f"{directory}: no kustomization file")


def _load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _apply_patch(
    directory: Path, entry: dict[str, Any], resources: list[Resource]
) -> list[Resource]:
    unsupported = set(entry) - {"path", "patch", "target"}
    if unsupported or ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{directory}: unsupported patch entry {entry!r}")
    if "path" in entry:
        documents = _load_documents(directory / entry["path"])
    else:
        documents = [doc for doc in yaml.safe_load_all(entry["patch"]) if doc is not None]
    target = entry.get("target")
    if target is not None and (set(target) - {"kind", "name"}):
        raise KustomizeError(f"{directory}: unsupported patch target {target!r}")
    for document in documents:
        patch = copy.deepcopy(document)
        directive = patch.pop("$patch", None)
        if directive not in (None, "delete"):
            raise KustomizeError(f"{directory}: unsupported $patch: {directive}")
        matched = [r for r in resources if _matches(r, patch, target)]
        if not matched:
            raise KustomizeError(f"{directory}: patch {_identity(patch)} matches no resource")
        if directive == "delete":
            resources = [r for r in resources if not any(r is m for m in matched)]
            continue
        for resource in matched:
            # The target says which resources; the patch's own name does not rename them.
            body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")}
            metadata = {
                k: v for k, v in patch.get("metadata", {}).items() if k not in ("name", "namespace")
            }
            _merge(resource, body)
            if metadata:
                _merge(resource.setdefault("metadata", {}), metadata)
    return resources


def _matches(resource: Resource, patch: Resource, target: dict[str, str] | None) -> bool:
    name = resource.get("metadata", {}).get("name", "")
    if target is not None:
        kind_ok = "kind" not in target or resource.get("kind") == target["kind"]
        name_ok = "name" not in target or re.fullmatch(target["name"], name) is not None
        return kind_ok and name_ok
    return resource.get("kind") == patch.get("kind") and name == patch.get("metadata", {}).get(
        "name"
    )


def _identity(resource: Resource) -> str:
    return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"unsupported strategic merge directive {key}")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(base.get(key), list):
            _merge_list(base[key], value, _MERGE_KEYS[key])
        else:
            base[key] = copy.deepcopy(value)


def _merge_list(base: list[Any], patch: list[Any], merge_key: str) -> None:
    for item in patch:
        existing = next(
            (b for b in base if isinstance(b, dict) and b.get(merge_key) == item.get(merge_key)),
            None,
        )
        if existing is None:
            base.append(copy.deepcopy(item))
        else:
            _merge(existing, item)


def _set_namespace(resources: list[Resource], namespace: str) -> None:
    for resource in resources:
        if resource.get("kind") == "Namespace":
            if resource["metadata"]["name"] != namespace:
                raise KustomizeError(
                    f"Namespace {resource['metadata']['name']} differs from {namespace}"
                )
        elif resource.get("kind") not in _CLUSTER_SCOPED_KINDS:
            resource.setdefault("metadata", {})["namespace"] = namespace


def _add_labels(resources: list[Resource], entry: dict[str, Any]) -> None:
    if (
        set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        or entry.get("includeSelectors")
        or entry.get("includeTemplates")
    ):
        raise KustomizeError(f"unsupported labels entry {entry!r}")
    for resource in resources:
        labels = resource.setdefault("metadata", {}).setdefault("labels", {})
        labels.update(entry["pairs"])


def _set_image(node: Any, image: dict[str, str]) -> None:
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                container["image"] = _new_image(container.get("image", ""), image)
        _set_image(value, image)


def _new_image(current: str, image: dict[str, str]) -> str:
    name, tag, digest = _split_image(current)
    if name != image["name"]:
        return current
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _split_image(image: str) -> tuple[str, str, str]:
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest
    return rest, "", digest
