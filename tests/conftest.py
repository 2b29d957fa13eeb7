"""Fixtures for every test: a fixed seed. Shared helpers live in helpers.py."""

from __future__ import annotations

import pytest
import torch

pytest_plugins = ["site_fixtures"]  # the built site, its servers and Chromium, shared by the browser tests


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
