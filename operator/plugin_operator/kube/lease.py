"""Leader election on a coordination.k8s.io/v1 Lease (design §9), the way
client-go's leaderelection does it, so two replicas never reconcile at once.

- A candidate reads the Lease; it takes it when the Lease is free (no
  holder), already its own, or not renewed for `lease_duration` seconds as
  measured on the candidate's own clock since it last saw the record change
  (clock skew between nodes does not matter). Every write is an update with
  the resourceVersion read (optimistic concurrency): of two candidates
  racing for an expired Lease, exactly one update succeeds.
- The leader renews every `renew_period` seconds. If it has not renewed
  successfully for `renew_deadline` seconds (< lease_duration) it must stop
  acting at once: `keep` returns and the caller exits the process, well
  before another candidate may take the Lease.
- On a clean shutdown the leader releases the Lease (holder cleared), so the
  next one takes over after one retry period instead of a lease duration.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    renew_period: float = 2.0  # how often the leader renews (client-go: retry period)
    retry_period: float = 2.0  # how often a candidate tries


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaseElector:
    def __init__(self, config: LeaseConfig, api_client: client.ApiClient | None = None) -> None:
        if not config.renew_deadline < config.lease_duration:
            raise ValueError("the renew deadline must be shorter than the lease duration")
        self.config = config
        # Any: the client's models are loosely typed (Optional everywhere).
        self._api: Any = client.CoordinationV1Api(api_client or client.ApiClient())
        # What we last saw of the record, and when (our monotonic clock).
        self._seen: tuple[Any, Any, Any] | None = None
        self._seen_at = 0.0
        self.held_since: float | None = None

    # -- one attempt ---------------------------------------------------------

    def _body(self, lease: Any | None, transitions: int) -> dict[str, Any]:
        now = _now().isoformat(timespec="microseconds").replace("+00:00", "Z")
        spec = {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": int(self.config.lease_duration),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        spec["acquireTime"] = now
        if lease is not None and lease.spec.holder_identity == self.config.identity and lease.spec.acquire_time:
            spec["acquireTime"] = lease.spec.acquire_time.isoformat().replace("+00:00", "Z")
        body: dict[str, Any] = {
            "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            "spec": spec,
        }
        if lease is not None:
            body["metadata"]["resourceVersion"] = lease.metadata.resource_version
        return body

    def try_acquire_or_renew(self) -> bool:
        """One attempt (blocking): True when this candidate holds the Lease."""
        cfg = self.config
        try:
            lease = self._api.read_namespaced_lease(cfg.name, cfg.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self._api.create_namespaced_lease(cfg.namespace, self._body(None, 0))
            except ApiException as exc2:
                if exc2.status == 409:  # another candidate created it first
                    return False
                raise
            return True
        spec = lease.spec
        holder = spec.holder_identity or None
        seen = (holder, spec.renew_time, lease.metadata.resource_version)
        now = time.monotonic()
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        duration = float(spec.lease_duration_seconds or cfg.lease_duration)
        if holder not in (None, cfg.identity) and now - self._seen_at < duration:
            return False  # held by another, and renewed recently as far as we saw
        transitions = int(spec.lease_transitions or 0) + (0 if holder == cfg.identity else 1)
        try:
            self._api.replace_namespaced_lease(cfg.name, cfg.namespace, self._body(lease, transitions))
        except ApiException as exc:
            if exc.status == 409:  # someone wrote it since we read it
                return False
            raise
        return True

    def release(self) -> None:
        """Clear the holder if it is still us (a clean shutdown)."""
        cfg = self.config
        try:
            lease = self._api.read_namespaced_lease(cfg.name, cfg.namespace)
            if lease.spec.holder_identity != cfg.identity:
                return
            body = self._body(lease, int(lease.spec.lease_transitions or 0))
            body["spec"]["holderIdentity"] = None
            body["spec"]["leaseDurationSeconds"] = 1
            self._api.replace_namespaced_lease(cfg.name, cfg.namespace, body)
        except Exception:  # best effort: the Lease expires anyway
            log.warning("could not release Lease %s/%s", cfg.namespace, cfg.name, exc_info=True)

    # -- loops -----------------------------------------------------------------

    async def acquire(self) -> None:
        """Wait until this candidate holds the Lease."""
        cfg = self.config
        said = False
        while True:
            try:
                if await asyncio.to_thread(self.try_acquire_or_renew):
                    self.held_since = time.monotonic()
                    log.info("leader election: %s holds Lease %s/%s", cfg.identity, cfg.namespace, cfg.name)
                    return
            except Exception as exc:
                log.warning("leader election: cannot read or write Lease %s/%s: %s", cfg.namespace, cfg.name, exc)
            if not said:
                holder = self._seen[0] if self._seen else None
                log.info("leader election: waiting for Lease %s/%s (held by %s)", cfg.namespace, cfg.name, holder)
                said = True
            await asyncio.sleep(cfg.retry_period)

    async def keep(self) -> None:
        """Renew while leading; return as soon as the Lease is lost or could
        not be renewed for `renew_deadline` seconds: the caller must stop."""
        cfg = self.config
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(cfg.renew_period)
            try:
                # Bounded: a hung call must not outlive the deadline.
                remaining = max(0.1, cfg.renew_deadline - (time.monotonic() - last_ok))
                ok = await asyncio.wait_for(asyncio.to_thread(self.try_acquire_or_renew), remaining)
            except Exception as exc:
                log.warning("leader election: renewing Lease %s/%s failed: %s", cfg.namespace, cfg.name, exc)
                ok = None
            if ok is True:
                last_ok = time.monotonic()
                continue
            if ok is False:
                log.error("leader election: Lease %s/%s was taken by %s", cfg.namespace, cfg.name, self._seen)
                return
            if time.monotonic() - last_ok >= cfg.renew_deadline:
                log.error(
                    "leader election: Lease %s/%s not renewed for %.0fs: stepping down",
                    cfg.namespace,
                    cfg.name,
                    cfg.renew_deadline,
                )
                return
