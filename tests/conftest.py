"""Fixtures for every test: a fixed seed. Shared helpers live in helpers.py."""

from __future__ import annotations

import pytest
import torch

pytest_plugins = ["site_fixtures"]  # tests/site/: the built site, its servers and Chromium, built once per run


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
