"""The hostile-input suite (issue: Trust). Every test here is one distinct
hostile input, named after it (parametrised ids), asserting the outcome the
design requires: rejected at `kubectl apply`, or refused with a named reason
and nothing delivered, nothing lost. At the end of the session one line says
how many were tried and how many held:

    RESULT hostile_inputs=N handled=N

A case that does not hold fails its test, so the suite fails with it."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent
_tried: set[str] = set()
_held: set[str] = set()


def _is_hostile(nodeid: str, path: Path) -> bool:
    return _HERE in path.parents or path.parent == _HERE


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = Path(str(report.fspath)).resolve()
    if not _is_hostile(report.nodeid, path):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _tried.add(report.nodeid)
        if report.passed and report.when == "call":
            _held.add(report.nodeid)
        else:
            _held.discard(report.nodeid)
    elif report.when == "teardown" and not report.passed:
        _held.discard(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _tried:
        terminalreporter.write_line(f"RESULT hostile_inputs={len(_tried)} handled={len(_held)}")
