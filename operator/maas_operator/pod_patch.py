"""Merges the operator-level worker pod patch into a worker pod the way `kubectl patch --type strategic` would.

A plain dict merge replaces lists, so a patch that adds one volume, sidecar or environment variable would wipe
the operator's own. Lists that Kubernetes merges by key are merged by the same key here: containers and init
containers by name, volumes by name, a container's volumeMounts by mountPath, env by name and ports by
containerPort, imagePullSecrets by name, hostAliases by ip. Tolerations are appended (an identical one is not
repeated). An item matched by key is merged recursively; a new one is appended in the patch's order. Any other
list, and every scalar, replaces. As in a strategic merge patch, a null value deletes the key and an item
`{"<key>": ..., "$patch": "delete"}` deletes the matching item. Pure: returns a new manifest.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

Manifest = dict[str, Any]

PATCH_DIRECTIVE = "$patch"
DELETE = "delete"

# The merge key of each keyed list, by the name of the field that holds it. Field names are unique enough in
# a Pod for this (`ports` is a container's; a pod has none), which keeps the table flat.
MERGE_KEYS: Mapping[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "resourceClaims": "name",
}
APPENDED_LISTS = frozenset({"tolerations"})
"""Lists whose patch items are added to the operator's (Kubernetes itself would replace them)."""


class PodPatchError(ValueError):
    """A patch that cannot be merged; the message names the field path."""


def merge_pod_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> Manifest:
    """`base` with `patch` merged in (see the module's rules); neither argument is changed.

    Raises PodPatchError for an item of a keyed list without its key or an unknown `$patch` directive;
    `merge_pod_patch({}, patch)` checks a whole patch once (settings do, at start-up).
    """
    return _merge_dict(base, patch, path="")


def _merge_dict(base: Mapping[str, Any], patch: Mapping[str, Any], path: str) -> Manifest:
    merged: Manifest = copy.deepcopy(dict(base))
    for key, value in patch.items():
        where = f"{path}.{key}" if path else key
        if key == PATCH_DIRECTIVE:
            raise PodPatchError(f"{where}: {PATCH_DIRECTIVE} is only allowed in an item of a merged list")
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            current = merged.get(key)
            merged[key] = _merge_dict(current if isinstance(current, Mapping) else {}, value, where)
        elif isinstance(value, list) and (key in MERGE_KEYS or key in APPENDED_LISTS):
            current = merged.get(key)
            merged[key] = _merge_list(key, current if isinstance(current, list) else [], value, where)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_list(field: str, base: list[Any], patch: list[Any], path: str) -> list[Any]:
    result = list(base)
    if field in APPENDED_LISTS:
        for item in patch:
            if item not in result:
                result.append(copy.deepcopy(item))
        return result
    key = MERGE_KEYS[field]
    for index, item in enumerate(patch):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping) or key not in item:
            raise PodPatchError(f"{where}: an item of {field} needs its merge key {key!r}")
        directive = item.get(PATCH_DIRECTIVE)
        if directive is not None and directive != DELETE:
            raise PodPatchError(f"{where}.{PATCH_DIRECTIVE}: only {DELETE!r} is supported, not {directive!r}")
        position = next(
            (
                i
                for i, existing in enumerate(result)
                if isinstance(existing, Mapping) and existing.get(key) == item[key]
            ),
            None,
        )
        if directive == DELETE:
            if position is not None:
                del result[position]
            continue
        fields = {k: v for k, v in item.items() if k != PATCH_DIRECTIVE}
        if position is None:
            result.append(_merge_dict({}, fields, where))
        else:
            result[position] = _merge_dict(result[position], fields, where)
    return result
