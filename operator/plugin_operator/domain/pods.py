"""Which pods of a workspace get a plugin, in which container and where.

Pure functions over pod objects as plain mappings (the API's JSON shape).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WORKSPACE_LABEL = "plugins.workspace.dev/workspace"
RUNTIME_LABEL = "plugins.workspace.dev/runtime"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
DEFAULT_CONFIGS_DIR = "/configs"
_SAFE_DIR = re.compile(r"^/[A-Za-z0-9._/@+-]{0,1023}$")


@dataclass(frozen=True)
class PodPlan:
    name: str
    container: str | None
    configs_dir: str
    ready: bool
    external: bool
    problem: str | None = None


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


_FIELD_REFS = {"metadata.name": "name", "metadata.namespace": "namespace", "metadata.uid": "uid"}
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def configs_dir(container: Mapping[str, Any], pod_meta: Mapping[str, Any]) -> str:
    """The container's CONFIGS_DIR env value when the pod spec declares one,
    with `$(VAR)` references to earlier env entries expanded the way the
    kubelet does (literal values and the pod's name, namespace and uid)."""
    known: dict[str, str] = {}
    for env in container.get("env") or []:
        name = env.get("name")
        raw = env.get("value")
        value: str | None
        if isinstance(raw, str):
            value = _VAR_REF.sub(lambda m: known.get(m.group(1), m.group(0)), raw)
        else:
            field_path = _get(env, "valueFrom", "fieldRef", "fieldPath")
            value = str(pod_meta.get(_FIELD_REFS[field_path], "")) if field_path in _FIELD_REFS else None
        if isinstance(name, str) and value is not None:
            known[name] = value
        if name == "CONFIGS_DIR" and value:
            return value
    return DEFAULT_CONFIGS_DIR


def plan_pod(pod: Mapping[str, Any], wanted_container: str | None) -> PodPlan:
    name = str(_get(pod, "metadata", "name"))
    labels = _get(pod, "metadata", "labels") or {}
    annotations = _get(pod, "metadata", "annotations") or {}
    external = labels.get(RUNTIME_LABEL) == "external"
    containers: Sequence[Mapping[str, Any]] = _get(pod, "spec", "containers") or []
    chosen = wanted_container or annotations.get(DEFAULT_CONTAINER_ANNOTATION)
    container = next((c for c in containers if c.get("name") == chosen), None) if chosen else None
    if container is None and not wanted_container and containers:
        container = containers[0]
    running = _get(pod, "status", "phase") == "Running" and not _get(pod, "metadata", "deletionTimestamp")
    if container is None:
        return PodPlan(name, None, DEFAULT_CONFIGS_DIR, running, external, f"no container named {chosen!r}")
    directory = configs_dir(container, _get(pod, "metadata") or {})
    if not _SAFE_DIR.fullmatch(directory) or "/../" in f"{directory}/":
        return PodPlan(name, container.get("name"), directory, running, external, "CONFIGS_DIR is not a clean path")
    statuses = _get(pod, "status", "containerStatuses") or []
    started = any(s.get("name") == container.get("name") and s.get("ready") for s in statuses) or not statuses
    return PodPlan(name, str(container.get("name")), directory.rstrip("/") or "/", running and started, external)


def owner_of(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the pod's controller (StatefulSet or ReplicaSet)."""
    for ref in _get(pod, "metadata", "ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("kind")), str(ref.get("name"))
    return None
