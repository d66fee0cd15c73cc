"""Leader election (kube/lease.py) against an in-memory Lease API with
optimistic concurrency, on a fake clock."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from plugin_operator.kube import lease as lease_mod
from plugin_operator.kube.lease import LeaseConfig, LeaseElector


class FakeLeases:
    def __init__(self) -> None:
        self.obj: SimpleNamespace | None = None
        self.version = 0

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        spec = body["spec"]
        self.obj = SimpleNamespace(
            metadata=SimpleNamespace(resource_version=str(self.version)),
            spec=SimpleNamespace(
                holder_identity=spec.get("holderIdentity"),
                lease_duration_seconds=spec.get("leaseDurationSeconds"),
                renew_time=spec.get("renewTime"),
                acquire_time=None,
                lease_transitions=spec.get("leaseTransitions"),
            ),
        )

    def read_namespaced_lease(self, name: str, namespace: str) -> SimpleNamespace:
        if self.obj is None:
            raise ApiException(status=404)
        return self.obj

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> None:
        if self.obj is not None:
            raise ApiException(status=409)
        self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        assert self.obj is not None
        if body["metadata"]["resourceVersion"] != self.obj.metadata.resource_version:
            raise ApiException(status=409)
        self._store(body)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(lease_mod.time, "monotonic", lambda: now[0])
    return now


def elector(api: FakeLeases, who: str) -> LeaseElector:
    e = LeaseElector(LeaseConfig("ns", "lease", who), api_client=None)
    e._api = api
    return e


def test_one_holder_and_a_takeover_only_after_the_lease_expired(clock: list[float]) -> None:
    api = FakeLeases()
    a, b = elector(api, "a"), elector(api, "b")
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    for _ in range(10):  # a renews; b keeps seeing the record change
        clock[0] += 2
        assert a.try_acquire_or_renew() is True
        assert b.try_acquire_or_renew() is False
    clock[0] += 14  # a died: not yet a lease duration since b saw a change
    assert b.try_acquire_or_renew() is False
    clock[0] += 2
    assert b.try_acquire_or_renew() is True
    assert api.obj is not None and api.obj.spec.holder_identity == "b" and api.obj.spec.lease_transitions == 1
    assert a.try_acquire_or_renew() is False  # a, back, finds it taken


def test_of_two_candidates_racing_for_an_expired_lease_one_wins(clock: list[float]) -> None:
    api = FakeLeases()
    assert elector(api, "dead").try_acquire_or_renew() is True
    b, c = elector(api, "b"), elector(api, "c")
    assert b.try_acquire_or_renew() is False and c.try_acquire_or_renew() is False
    clock[0] += 16
    seen = api.read_namespaced_lease("lease", "ns")
    original = api.read_namespaced_lease
    api.read_namespaced_lease = lambda name, namespace: seen  # type: ignore[method-assign]
    results = [b.try_acquire_or_renew(), c.try_acquire_or_renew()]  # both read the same version
    api.read_namespaced_lease = original  # type: ignore[method-assign]
    assert sorted(results) == [False, True]


def test_a_released_lease_is_taken_at_once(clock: list[float]) -> None:
    api = FakeLeases()
    a, b = elector(api, "a"), elector(api, "b")
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    a.release()
    assert b.try_acquire_or_renew() is True


async def test_a_leader_that_cannot_renew_steps_down_before_the_lease_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeLeases()
    cfg = LeaseConfig("ns", "lease", "a", lease_duration=1.5, renew_deadline=0.6, renew_period=0.1, retry_period=0.1)
    a = LeaseElector(cfg, api_client=None)
    a._api = api
    assert a.try_acquire_or_renew() is True

    def broken(name: str, namespace: str) -> None:
        raise ApiException(status=503)

    api.read_namespaced_lease = broken  # type: ignore[assignment, method-assign]
    started = dt.datetime.now()
    await a.keep()
    took = (dt.datetime.now() - started).total_seconds()
    assert 0.5 <= took < 1.5
