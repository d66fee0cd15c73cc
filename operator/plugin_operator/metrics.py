"""Prometheus metrics (design §9), served on PLUGIN_METRICS_PORT (/metrics).

The counters are module-level (one operator per process); gauges that mirror
a live value (git calls, staging fetches) read it when scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, start_http_server

INSTALLS = Counter(
    "plugin_operator_installs", "Reconciles of PluginInstalls, by outcome", ["outcome"]
)  # outcome: installed (content changed), current, failed, stalled
SWEEPS = Counter("plugin_operator_sweeps", "Drift sweeps run")
ERRORS = Counter("plugin_operator_errors", "Errors by condition reason", ["reason"])
PENDING = Gauge("plugin_operator_pending_updates", "PluginUpdates waiting for approval (last sweep)")
OLDEST_PENDING = Gauge(
    "plugin_operator_oldest_pending_update_age_seconds", "Age of the oldest pending PluginUpdate (last sweep)"
)
GIT_CALLS = Gauge("plugin_operator_git_ls_remote_calls", "git ls-remote commands started since start-up")
FETCHES = Gauge("plugin_operator_git_fetches", "git fetch commands started since start-up")


def serve(port: int, git_calls: Callable[[], float], fetches: Callable[[], float]) -> None:
    GIT_CALLS.set_function(git_calls)
    FETCHES.set_function(fetches)
    if port:
        start_http_server(port, addr="0.0.0.0")  # noqa: S104 - scraped from inside the cluster
