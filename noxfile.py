"""Development sessions: ``nox`` runs tests, lint and typecheck; ``nox -s bench`` benchmarks."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
TEST_DEPENDENCIES = [
    "pytest>=8",
    "pytest-trio>=0.8",
    "hypothesis>=6",
    "httpx>=0.27",
    "hypercorn>=0.16",
]


def _available_pythons() -> list[str]:
    """The supported Pythons installed here; CI must have at least 3.11."""
    return [version for version in PYTHONS if shutil.which(f"python{version}")]


PRIMARY_PYTHON = "3.11"
QUICK_PYTEST_ARGS = ["--seeds", "30", "--ignore=tests/crash"]
"""On the other Pythons: 30 randomized-fault seeds instead of 200, and no process-crash tests
(they exercise the OS, not the interpreter), so CI stays within its time on two cores."""


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite with pytest and pytest-trio.

    The whole suite on Python 3.11; a quicker pass on the others (see QUICK_PYTEST_ARGS).
    Extra arguments replace those: ``nox -s tests -- --seeds 2000`` or ``-- -k snapshot``.
    """
    session.install("-e", ".", *TEST_DEPENDENCIES)
    if session.posargs:
        arguments = session.posargs
    elif session.python == PRIMARY_PYTHON:
        arguments = []
    else:
        arguments = QUICK_PYTEST_ARGS
    # A fixed hash seed: set iteration order then repeats from run to run, so a failing
    # randomized-fault seed replays with --seed N.
    session.run("pytest", *arguments, env={"PYTHONHASHSEED": "0"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """Type-check the library with mypy --strict against trio's own inline annotations.

    trio-typing is deliberately not installed: its 0.10 stubs shadow trio's newer inline
    types (``trio.TaskStatus`` is missing there) and its mypy plugin crashes on current mypy.
    """
    # exceptiongroup: the Python 3.10 backport trio depends on there, which mypy checks too.
    session.install("-e", ".", "mypy", "exceptiongroup")
    session.run("mypy", "--strict", "tinyraft_trio")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmark tinyraft_trio against PySyncObj (issue 6); never run by default or in CI.

    Starts 3-node clusters of both as local processes and prints a table; results go to
    ``results/`` and ``benchmarks/LATEST.md``. ``nox -s bench -- --quick`` takes under two
    minutes; other arguments pass through to ``benchmarks/run.py``.
    """
    session.install("-e", ".", "pysyncobj")
    session.run("python", "benchmarks/run.py", *session.posargs)
