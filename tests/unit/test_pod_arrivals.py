"""PodArrivals (reconcile.pod_arrivals): the first Running sighting of a pod
kicks its workspace once; kicks of one workspace coalesce."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from plugin_operator.reconcile import pod_arrivals
from plugin_operator.reconcile.deps import Outcome


def _pod(uid: str, phase: str = "Running", workspace: str = "ws", **meta: Any) -> dict[str, Any]:
    labels = {"plugins.workspace.dev/workspace": workspace}
    return {"metadata": {"uid": uid, "namespace": "ns", "labels": labels, **meta}, "status": {"phase": phase}}


async def test_first_running_sighting_kicks_once_and_kicks_coalesce(monkeypatch: pytest.MonkeyPatch) -> None:
    reconciled: list[str] = []

    async def reconcile_install(deps: Any, namespace: str, name: str) -> Outcome:
        reconciled.append(name)
        return Outcome()

    async def list_installs(plural: str, namespace: str) -> list[dict[str, Any]]:
        return [
            {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"workspace": "ws"}},
            {"metadata": {"name": "b", "namespace": "ns"}, "spec": {"workspace": "other"}},
        ]

    monkeypatch.setattr(pod_arrivals, "reconcile_install", reconcile_install)
    arrivals = pod_arrivals.PodArrivals(SimpleNamespace(kube=SimpleNamespace(list=list_installs)), delay=0.01)  # type: ignore[arg-type]
    arrivals.pod_event("ADDED", _pod("1", phase="Pending"))
    arrivals.pod_event("MODIFIED", _pod("1"))
    arrivals.pod_event("MODIFIED", _pod("1"))  # status churn: no second kick
    arrivals.pod_event("ADDED", _pod("2"))  # another pod, same workspace: coalesced
    await asyncio.sleep(0.05)
    assert reconciled == ["a"]
    arrivals.pod_event("MODIFIED", _pod("1", deletionTimestamp="2026-01-01T00:00:00Z"))  # leaving: forgotten
    arrivals.pod_event("MODIFIED", _pod("1"))
    arrivals.kick("ns", None)  # no workspace: nothing
    await asyncio.sleep(0.05)
    assert reconciled == ["a", "a"]
    await arrivals.close()
