"""A PluginInstall's spec, parsed and validated (design §2, §3)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from plugin_operator.domain.errors import InvalidSpec
from plugin_operator.domain.pods import WORKSPACE_LABEL
from plugin_operator.domain.source import Source, parse_source
from plugin_operator.domain.track import Track, parse_track

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_OPERATORS = {"In": "in", "NotIn": "notin"}
Restart = Literal["Rollout", "None"]
Policy = Literal["Manual", "Automatic"]
_RESTARTS: dict[str, Restart] = {"Rollout": "Rollout", "None": "None"}
_POLICIES: dict[str, Policy] = {"Manual": "Manual", "Automatic": "Automatic"}


@dataclass(frozen=True)
class InstallSpec:
    workspace: str
    source: Source
    track: Track
    container: str | None
    restart: Restart
    update_policy: Policy
    suspend: bool
    pod_selector: str

    @property
    def plugin(self) -> str:
        return self.source.name


def _selector(raw: Mapping[str, Any] | None, workspace: str) -> str:
    """A label selector string for listing pods (default: the workspace label)."""
    if not raw:
        return f"{WORKSPACE_LABEL}={workspace}"
    parts: list[str] = []
    for key, value in sorted((raw.get("matchLabels") or {}).items()):
        if not _LABEL_KEY.match(str(key)) or not _LABEL_VALUE.match(str(value)):
            raise InvalidSpec(f"spec.podSelector.matchLabels: {key}={value} is not a valid label")
        parts.append(f"{key}={value}")
    for expr in raw.get("matchExpressions") or []:
        key, op, values = str(expr.get("key", "")), expr.get("operator"), expr.get("values") or []
        if not _LABEL_KEY.match(key) or any(not _LABEL_VALUE.match(str(v)) for v in values):
            raise InvalidSpec(f"spec.podSelector.matchExpressions: invalid key or values for {key!r}")
        if op in _OPERATORS:
            parts.append(f"{key} {_OPERATORS[op]} ({','.join(map(str, values))})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise InvalidSpec(f"spec.podSelector.matchExpressions: unknown operator {op!r}")
    if not parts:
        raise InvalidSpec("spec.podSelector selects every pod in the namespace; name at least one label")
    return ",".join(parts)


def parse_install_spec(spec: Mapping[str, Any], *, allow_unpinned: bool) -> InstallSpec:
    workspace = spec.get("workspace")
    if not isinstance(workspace, str) or not _LABEL_VALUE.match(workspace):
        raise InvalidSpec(f"spec.workspace: {workspace!r} is not a valid workspace id (a label value)")
    raw_source = spec.get("source")
    if not isinstance(raw_source, str):
        raise InvalidSpec("spec.source is required")
    source = parse_source(raw_source, allow_unpinned=allow_unpinned)
    track = parse_track(spec.get("track"), source)
    container = spec.get("container") or None
    restart = _RESTARTS.get(spec.get("restart") or "Rollout")
    policy = _POLICIES.get(spec.get("updatePolicy") or "Manual")
    if restart is None:
        raise InvalidSpec(f"spec.restart: {spec.get('restart')!r}; expected Rollout or None")
    if policy is None:
        raise InvalidSpec(f"spec.updatePolicy: {spec.get('updatePolicy')!r}; expected Manual or Automatic")
    return InstallSpec(
        workspace=workspace,
        source=source,
        track=track,
        container=container,
        restart=restart,
        update_policy=policy,
        suspend=bool(spec.get("suspend")),
        pod_selector=_selector(spec.get("podSelector"), workspace),
    )
