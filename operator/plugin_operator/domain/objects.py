"""Typed, frozen views of the operator's objects, parsed once from the API's
JSON: ObjectMeta, InstallView (PluginInstall) and UpdateView (PluginUpdate).

A view keeps the raw body (`body`) for what writes back whole: the Event's
object reference, the mirror's rows. Pure: plain mappings in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from plugin_operator.domain import conditions as cond


class UpdateState(enum.StrEnum):
    """PluginUpdate status.state. str-valued, so the JSON written is
    unchanged; each member's name is its value, so it also hashes like the
    string (a dict keyed by state text finds it)."""

    Pending = "Pending"
    Applying = "Applying"
    Applied = "Applied"
    Dismissed = "Dismissed"
    Superseded = "Superseded"
    Failed = "Failed"
    Rejected = "Rejected"

    @classmethod
    def parse(cls, value: object) -> UpdateState:
        """No state yet (created, not reconciled yet) is Pending."""
        if not value:
            return cls.Pending
        try:
            return cls(str(value))
        except ValueError:
            return cls.Pending

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = (UpdateState.Applied, UpdateState.Dismissed, UpdateState.Superseded, UpdateState.Rejected)


def section(obj: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """obj[name] when it is a mapping, else {} (a missing status, a null spec)."""
    value = obj.get(name)
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True)
class OwnerReference:
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    creation_timestamp: str = ""
    deletion_timestamp: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    owner_references: tuple[OwnerReference, ...] = ()

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> ObjectMeta:
        meta = section(obj, "metadata")
        owners = tuple(
            OwnerReference(
                api_version=str(ref.get("apiVersion", "")),
                kind=str(ref.get("kind", "")),
                name=str(ref.get("name", "")),
                uid=str(ref.get("uid", "")),
                controller=ref.get("controller") is True,
            )
            for ref in meta.get("ownerReferences") or []
            if isinstance(ref, Mapping)
        )
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation") or 0),
            creation_timestamp=str(meta.get("creationTimestamp") or ""),
            deletion_timestamp=_text(meta.get("deletionTimestamp")),
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            owner_references=owners,
        )

    @property
    def deleting(self) -> bool:
        return self.deletion_timestamp is not None


# -- PluginInstall -----------------------------------------------------------------

# Every status field the operator owns (design §2); a status write carries
# each of them, None clearing it.
INSTALL_STATUS_KEYS = (
    "pluginName",
    "sourceNormalized",
    "trackedRef",
    "installedSHA",
    "installedShortSHA",
    "installedDigest",
    "installedAt",
    "installedSkills",
    "resolvedRef",
    "upstreamSHA",
    "lastResolvedAt",
    "pendingUpdate",
    "pendingUpdateSHA",
    "pendingUpdateRef",
    "targetSHA",
    "targetDigest",
    "targetSource",
    "targetUpdate",
    "observedResolve",
    "pods",
)


@dataclass(frozen=True)
class PodEntry:
    """One entry of status.pods as last written."""

    name: str
    sha: str | None = None
    digest: str | None = None
    time: str | None = None


@dataclass(frozen=True)
class InstallStatus:
    plugin_name: str | None = None
    source_normalized: str | None = None
    tracked_ref: str | None = None
    installed_sha: str | None = None
    installed_digest: str | None = None
    installed_at: str | None = None
    installed_skills: tuple[str, ...] = ()
    resolved_ref: str | None = None
    upstream_sha: str | None = None
    pending_update: str | None = None
    pending_update_sha: str | None = None
    pending_update_ref: str | None = None
    # The intent (design §5): what the pods are being brought to, recorded
    # before any pod is touched, cleared when installedSHA records it.
    target_sha: str | None = None
    target_digest: str | None = None
    target_source: str | None = None
    target_update: str | None = None
    observed_resolve: str | None = None
    pods: tuple[PodEntry, ...] = ()
    conditions: tuple[cond.Condition, ...] = ()
    # The conditions as written (their lastTransitionTime is carried over).
    raw_conditions: tuple[Mapping[str, Any], ...] = ()
    # The known fields as written, carried whole into the next write.
    carried: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, status: Mapping[str, Any]) -> InstallStatus:
        raw_conditions = tuple(c for c in status.get("conditions") or [] if isinstance(c, Mapping))
        pods = tuple(
            PodEntry(str(p.get("name", "")), _text(p.get("sha")), _text(p.get("digest")), _text(p.get("time")))
            for p in status.get("pods") or []
            if isinstance(p, Mapping)
        )
        return cls(
            plugin_name=_text(status.get("pluginName")),
            source_normalized=_text(status.get("sourceNormalized")),
            tracked_ref=_text(status.get("trackedRef")),
            installed_sha=_text(status.get("installedSHA")),
            installed_digest=_text(status.get("installedDigest")),
            installed_at=_text(status.get("installedAt")),
            installed_skills=tuple(s for s in status.get("installedSkills") or [] if isinstance(s, str)),
            resolved_ref=_text(status.get("resolvedRef")),
            upstream_sha=_text(status.get("upstreamSHA")),
            pending_update=_text(status.get("pendingUpdate")),
            pending_update_sha=_text(status.get("pendingUpdateSHA")),
            pending_update_ref=_text(status.get("pendingUpdateRef")),
            target_sha=_text(status.get("targetSHA")),
            target_digest=_text(status.get("targetDigest")),
            target_source=_text(status.get("targetSource")),
            target_update=_text(status.get("targetUpdate")),
            observed_resolve=_text(status.get("observedResolve")),
            pods=pods,
            conditions=tuple(cond.parse(c) for c in raw_conditions),
            raw_conditions=raw_conditions,
            carried={key: status.get(key) for key in INSTALL_STATUS_KEYS},
        )

    def condition(self, type_: str) -> cond.Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True)
class InstallView:
    """A PluginInstall: metadata, spec as written (parsed by
    domain.install_spec where it must be valid), status parsed."""

    meta: ObjectMeta
    spec: Mapping[str, Any]
    status: InstallStatus
    body: Mapping[str, Any]  # as read: the Event's object reference, the mirror's row

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> InstallView:
        return cls(ObjectMeta.parse(obj), section(obj, "spec"), InstallStatus.parse(section(obj, "status")), obj)

    @property
    def workspace(self) -> str:
        return str(self.spec.get("workspace", ""))


# -- PluginUpdate ----------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateSpec:
    plugin_install: str = ""
    workspace: str = ""
    plugin: str = ""
    tracked_ref: str = ""
    from_sha: str | None = None
    to_sha: str = ""
    from_digest: str | None = None
    to_digest: str | None = None
    rewrite: str | None = None
    approved: bool = False
    dismissed: bool = False

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> UpdateSpec:
        return cls(
            plugin_install=str(spec.get("pluginInstall") or ""),
            workspace=str(spec.get("workspace") or ""),
            plugin=str(spec.get("plugin") or ""),
            tracked_ref=str(spec.get("trackedRef") or ""),
            from_sha=_text(spec.get("fromSHA")),
            to_sha=str(spec.get("toSHA") or ""),
            from_digest=_text(spec.get("fromDigest")),
            to_digest=_text(spec.get("toDigest")),
            rewrite=_text(spec.get("rewrite")),
            approved=bool(spec.get("approved")),
            dismissed=bool(spec.get("dismissed")),
        )


@dataclass(frozen=True)
class UpdateStatus:
    state: UpdateState = UpdateState.Pending
    written: bool = False  # any status at all yet
    message: str | None = None
    applied_sha: str | None = None
    applied_at: str | None = None
    superseded_by: str | None = None
    rejected_because: str | None = None
    attempts: int = 0
    observed_retry: str | None = None
    raw_conditions: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def parse(cls, status: Mapping[str, Any]) -> UpdateStatus:
        return cls(
            state=UpdateState.parse(status.get("state")),
            written=bool(status),
            message=_text(status.get("message")),
            applied_sha=_text(status.get("appliedSHA")),
            applied_at=_text(status.get("appliedAt")),
            superseded_by=_text(status.get("supersededBy")),
            rejected_because=_text(status.get("rejectedBecause")),
            attempts=int(status.get("attempts") or 0),
            observed_retry=_text(status.get("observedRetry")),
            raw_conditions=tuple(c for c in status.get("conditions") or [] if isinstance(c, Mapping)),
        )


@dataclass(frozen=True)
class UpdateView:
    meta: ObjectMeta
    spec: UpdateSpec
    status: UpdateStatus
    body: Mapping[str, Any]

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> UpdateView:
        return cls(
            ObjectMeta.parse(obj),
            UpdateSpec.parse(section(obj, "spec")),
            UpdateStatus.parse(section(obj, "status")),
            obj,
        )

    @property
    def state(self) -> UpdateState:
        return self.status.state

    def with_status(self, status: Mapping[str, Any]) -> UpdateView:
        """The view after `status` was written (the body too: the mirror reads it)."""
        return UpdateView.parse({**self.body, "status": status})
