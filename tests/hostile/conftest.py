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

from tests.fixtures.tally import Tally

_TALLY = Tally(Path(__file__).parent)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _TALLY.record(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TALLY.tried:
        terminalreporter.write_line(f"RESULT hostile_inputs={len(_TALLY.tried)} handled={len(_TALLY.held)}")
