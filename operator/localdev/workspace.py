"""Workspace workloads for the local cluster: a StatefulSet on the kwok node
whose pods each declare their own host directory as CONFIGS_DIR (kwok runs
`kubectl exec` as host processes, so that directory is what the operator
writes, exactly as it would write a pod's /configs volume)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORKSPACE_LABEL = "plugins.workspace.dev/workspace"


def statefulset(
    name: str,
    namespace: str,
    workspace: str,
    configs_root: Path,
    node_name: str,
    *,
    replicas: int = 1,
    runtime: str | None = None,
) -> dict[str, Any]:
    labels = {"app": name, WORKSPACE_LABEL: workspace}
    if runtime:
        labels["plugins.workspace.dev/runtime"] = runtime
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeName": node_name,
                    "containers": [
                        {
                            "name": "agent",
                            "image": "agent-workspace:local",
                            "env": [
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                {"name": "CONFIGS_DIR", "value": f"{configs_root}/$(POD_NAME)"},
                            ],
                        }
                    ],
                },
            },
        },
    }


def plugin_install(name: str, namespace: str, workspace: str, source: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "plugins.workspace.dev/v1alpha1",
        "kind": "PluginInstall",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"workspace": workspace, "source": source, **spec},
    }
