"""Thin async wrappers over the official client (blocking calls in threads)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from plugin_operator import GROUP, VERSION

INSTALLS = "plugininstalls"
UPDATES = "pluginupdates"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def load_config() -> None:
    """In-cluster config when running in a pod, else the current kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # Pods and workloads -----------------------------------------------------

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        result = await self._call(self.core.list_namespaced_pod, namespace, label_selector=label_selector)
        return [self.api_client.sanitize_for_serialization(p) for p in result.items]

    async def workload_of(self, namespace: str, kind: str, name: str) -> tuple[str, str] | None:
        """The StatefulSet or Deployment that owns a pod's controller."""
        if kind == "StatefulSet":
            return kind, name
        if kind == "ReplicaSet":
            try:
                rs = await self._call(self.apps.read_namespaced_replica_set, name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            for ref in rs.metadata.owner_references or []:
                if ref.controller and ref.kind == "Deployment":
                    return "Deployment", ref.name
        return None

    async def rollout_restart(self, namespace: str, kind: str, name: str, at: str) -> None:
        """What `kubectl rollout restart` does: stamp the pod template."""
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}
        patch = (
            self.apps.patch_namespaced_stateful_set if kind == "StatefulSet" else self.apps.patch_namespaced_deployment
        )
        await self._call(patch, name, namespace, body)

    async def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about one of our objects (what `kubectl describe` shows)."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name'][:200]}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=obj.get("apiVersion"),
                kind=obj.get("kind"),
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
            ),
            reason=reason[:128],
            message=message[:1024],
            type=type_,
            source=client.V1EventSource(component="plugin-operator"),
            reporting_component="plugins.workspace.dev/plugin-operator",
            reporting_instance=os.environ.get("HOSTNAME", "plugin-operator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        await self._call(self.core.create_namespaced_event, meta["namespace"], body)

    # Our resources ------------------------------------------------------------

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._call(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
            )
            return found
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, plural: str, namespace: str | None = None, label_selector: str = "") -> list[dict[str, Any]]:
        if namespace is None:
            result = await self._call(
                self.custom.list_cluster_custom_object, GROUP, VERSION, plural, label_selector=label_selector
            )
        else:
            result = await self._call(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                label_selector=label_selector,
            )
        return list(result.get("items", []))

    async def create(self, plural: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; None when it already exists (a retried creation is a no-op)."""
        try:
            created: dict[str, Any] = await self._call(
                self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body
            )
            return created
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    async def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": status},
        )
