"""Fixtures for every test: a fixed seed. Shared helpers live in helpers.py."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the machine's two cores (and the browser tests' Chromium): one
    # intra-op thread each, so their thread pools don't contend for the same cores.
    torch.set_num_threads(1)

pytest_plugins = ["site_fixtures"]  # tests/site/: the built site, its servers and Chromium, built once per run


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist's `--dist loadgroup` (pyproject's addopts), every test that uses the
    built site runs in one worker, with one server, one Chromium and the crawl done once,
    while the other worker takes the package tests, the doctests and the scripts."""
    for item in items:
        if "site" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("site"))
