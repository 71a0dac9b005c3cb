"""Shared pytest options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seeds", default="200", help="how many seeds the randomized fault tests run")
    parser.addoption("--seed", default=None, help="run the randomized fault tests for one seed")
