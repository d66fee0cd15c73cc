"""Test-only crash points (the fault suite, tests/faults/).

`PLUGIN_OPERATOR_TEST_CRASH_AT=<point>[,<point>...]`, read once at import,
makes the operator SIGKILL itself the first time it reaches a named point,
so a test can crash it at an exact place of the install and apply paths
(docs/architecture.md lists the points). Unset (always, outside tests):
`crash_point` does nothing. Never set it in a deployment.
"""

from __future__ import annotations

import logging
import os
import signal

_ARMED = frozenset(p.strip() for p in os.environ.get("PLUGIN_OPERATOR_TEST_CRASH_AT", "").split(",") if p.strip())

# The points that exist (a test naming another one is a mistake).
POINTS = frozenset(
    {
        "install-after-intent",  # status.target* written, no pod touched yet
        "install-after-first-pod",  # one pod swapped, the others not yet
        "install-after-swap",  # every pod holds the new commit, status not yet
        "apply-after-intent",  # the same three, on the apply of an approved update
        "apply-after-first-pod",
        "apply-after-swap",
        "uninstall-after-first-pod",  # one pod's plugin removed, the finalizer held
        "propose-after-supersede",  # the pending PluginUpdate superseded, the new one not recorded
        "propose-after-record",  # the new one recorded in the install's status, not created
    }
)


def crash_point(name: str) -> None:
    """SIGKILL this process if the test armed `name`."""
    if name in _ARMED:
        logging.getLogger(__name__).warning("test crash point %s reached: SIGKILL", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
