"""The fault-injection suite's summary line.

At the end of the session, one line: how many of the fault tests collected
here passed (setup, call and teardown, so a worker left behind, which the
shared conftest checks for, counts as a failure), and how many items the runs
lost, as counted by ``account``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault_injection._accounting import TALLY

HERE = Path(__file__).parent

_collected: set[str] = set()
_reported: set[str] = set()
_failed: set[str] = set()
_called: set[str] = set()


def _here(path: Path) -> bool:
    return HERE in path.parents


def pytest_collection_finish(session: pytest.Session) -> None:
    _collected.update(item.nodeid for item in session.items if _here(item.path))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _collected:
        return
    _reported.add(report.nodeid)
    if report.when == "call" and report.passed:
        _called.add(report.nodeid)
    if not report.passed:  # failed, skipped or xfailed, in any phase
        _failed.add(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _reported:  # none ran (collection only, or stopped before them)
        return
    survived = len(_called - _failed)
    terminalreporter.write_line(f"fault classes survived: {survived} of {len(_collected)}, items lost: {TALLY.lost}")
