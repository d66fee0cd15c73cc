"""The fault suite (issue: Faults). Every test injects one real fault into a
real component (the operator process, kube-apiserver, etcd, kwok pods, the
loopback git server, PostgreSQL) and checks the invariants after recovery:
no partial tree in any pod, no pod going back to an older commit, at most one
Pending PluginUpdate per install, the mirror equal to the cluster
(`plugin-operator db check` exits 0), and status saying what happened.

A test reports what it checked through the `invariants` fixture
(`invariants.check(name, held, detail)`, `invariants.lost(n)`); a violated
invariant fails the test. At the end of the session one line sums it up:

    RESULT faults=N survived=N invariant_violations=N records_lost=N
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.tally import Tally

_TALLY = Tally(Path(__file__).parent)
_violations: list[str] = []
_lost = [0]


@dataclass
class Invariants:
    """What one fault test checked."""

    nodeid: str
    checked: list[str] = field(default_factory=list)
    violated: list[str] = field(default_factory=list)

    def check(self, name: str, held: bool, detail: str = "") -> None:
        """Record an invariant; a violation fails the test at its end (after
        every invariant of the test was looked at)."""
        self.checked.append(name)
        if not held:
            self.violated.append(f"{name}: {detail}" if detail else name)

    def lost(self, records: int, detail: str = "") -> None:
        """Records (rows, objects, commits) lost by the fault: must be 0."""
        _lost[0] += records
        self.check("records_lost=0", records == 0, detail or f"{records} lost")


@pytest.fixture
def invariants(request: pytest.FixtureRequest) -> Iterator[Invariants]:
    found = Invariants(request.node.nodeid)
    yield found
    _violations.extend(f"{found.nodeid}: {v}" for v in found.violated)
    assert not found.violated, "invariants violated:\n" + "\n".join(found.violated)
    assert found.checked, "a fault test must check at least one invariant"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _TALLY.record(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TALLY.tried:
        terminalreporter.write_line(
            f"RESULT faults={len(_TALLY.tried)} survived={len(_TALLY.held)} "
            f"invariant_violations={len(_violations)} records_lost={_lost[0]}"
        )
