"""pytest plugin for .ci/sanitize (loaded with -p sanitize_plugin; no effect elsewhere).

A sanitizer report ends the test process at once, so the process cannot say which test it
was running. This plugin keeps a journal, flushed line by line, that outlives the process:

    start <pid> <time> <nodeid>     before each test
    done <pid> <outcome> <nodeid>   after each test (passed / failed / skipped)
    end <pid> <exitstatus>          at the end of a session that was not cut short

It also leaves out the tests named in the file LP_SANITIZE_SKIP (one node id a line): the
ones that finished, or crashed, in an earlier process of the same run.
"""

from __future__ import annotations

import os
import time

_journal = None


def _write(line: str) -> None:
    global _journal
    path = os.environ.get("LP_SANITIZE_JOURNAL")
    if not path:
        return
    if _journal is None:
        _journal = open(path, "a", buffering=1, encoding="utf-8")
    _journal.write(line + "\n")
    _journal.flush()
    os.fsync(_journal.fileno())


def pytest_collection_modifyitems(session, config, items):
    path = os.environ.get("LP_SANITIZE_SKIP")
    if not path or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        skip = {line.rstrip("\n") for line in f if line.strip()}
    keep = [item for item in items if item.nodeid not in skip]
    gone = [item for item in items if item.nodeid in skip]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = keep


def pytest_runtest_logstart(nodeid, location):
    _write(f"start {os.getpid()} {time.time():.6f} {nodeid}")


def pytest_runtest_logreport(report):
    # One outcome per test: the call phase, or setup when it failed or skipped, or a teardown error.
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed") or (
        report.when == "teardown" and report.outcome == "failed"
    ):
        _write(f"done {os.getpid()} {report.outcome} {report.nodeid}")


def pytest_sessionfinish(session, exitstatus):
    _write(f"end {os.getpid()} {int(exitstatus)}")
