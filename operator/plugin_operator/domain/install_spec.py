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

# Applied with fullmatch: `$` alone would accept a trailing newline.
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_CONTAINER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS-1123 label
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
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
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec.podSelector must be a label selector (matchLabels, matchExpressions)")
    parts: list[str] = []
    labels = raw.get("matchLabels") or {}
    expressions = raw.get("matchExpressions") or []
    if not isinstance(labels, Mapping) or not isinstance(expressions, list):
        raise InvalidSpec("spec.podSelector: matchLabels must be a map and matchExpressions a list")
    for key, value in sorted(labels.items()):
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise InvalidSpec(f"spec.podSelector.matchLabels: {key!r} is not a valid label key")
        if not isinstance(value, str) or (value and not _LABEL_VALUE.fullmatch(value)):
            raise InvalidSpec(f"spec.podSelector.matchLabels: {key}={value!r} is not a valid label value")
        parts.append(f"{key}={value}")
    for expr in expressions:
        if not isinstance(expr, Mapping):
            raise InvalidSpec("spec.podSelector.matchExpressions: each entry needs key, operator and values")
        key, op, values = expr.get("key", ""), expr.get("operator"), expr.get("values") or []
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise InvalidSpec(f"spec.podSelector.matchExpressions: {key!r} is not a valid label key")
        if not isinstance(values, list) or any(
            not isinstance(v, str) or (v and not _LABEL_VALUE.fullmatch(v)) for v in values
        ):
            raise InvalidSpec(f"spec.podSelector.matchExpressions: invalid values for {key!r}: {values!r}")
        if op in ("In", "NotIn") and not values:
            raise InvalidSpec(f"spec.podSelector.matchExpressions: {op} on {key!r} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise InvalidSpec(f"spec.podSelector.matchExpressions: {op} on {key!r} takes no values")
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


def _check_strings(spec: Mapping[str, Any]) -> None:
    """No spec string carries a control character (a trailing newline, a CR,
    a NUL): the CRD refuses them at apply time, this says it for objects
    that predate the schema."""
    for field in ("workspace", "source", "track", "container", "restart", "updatePolicy"):
        value = spec.get(field)
        if isinstance(value, str) and _CONTROL.search(value):
            raise InvalidSpec(f"spec.{field}: {value!r} contains a control character (a newline, CR, tab ...)")


def parse_install_spec(spec: Mapping[str, Any], *, allow_unpinned: bool) -> InstallSpec:
    _check_strings(spec)
    workspace = spec.get("workspace")
    if not isinstance(workspace, str) or not _LABEL_VALUE.fullmatch(workspace):
        raise InvalidSpec(f"spec.workspace: {workspace!r} is not a valid workspace id (a label value)")
    raw_source = spec.get("source")
    if not isinstance(raw_source, str):
        raise InvalidSpec("spec.source is required")
    source = parse_source(raw_source, allow_unpinned=allow_unpinned)
    track = parse_track(spec.get("track"), source)
    container = spec.get("container") or None
    if container is not None and (not isinstance(container, str) or not _CONTAINER.fullmatch(container)):
        raise InvalidSpec(
            f"spec.container: {container!r} is not a container name (a DNS-1123 label: at most 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit)"
        )
    suspend = spec.get("suspend", False)
    if suspend is not None and not isinstance(suspend, bool):
        raise InvalidSpec(f"spec.suspend: {suspend!r}; expected true or false")
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
        suspend=bool(suspend),
        pod_selector=_selector(spec.get("podSelector"), workspace),
    )
