"""Fixtures for the browser tests: the site built once, served at two bases, and one Chromium.

Loaded for every test module by conftest.py (`pytest_plugins`), so the site is
built once per run, however many modules use it, in the background from the
moment the run knows that a test needs it. Every request to a host other
than 127.0.0.1 is blocked and recorded, so a page that needs the internet (a
CDN, Google Fonts) fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from helpers import missing_modules, require
from site_server import SiteServer

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
LANGUAGES = {"en": "", "zh": "zh/"}
SITE_URL = "https://mha-dev.github.io/mha/"
PHONE, DESKTOP = 390, 1280


def _require_browser() -> None:
    require(missing_modules("playwright") + ([] if Path(CHROMIUM).exists() else ["chromium"]))


class _Build:
    """`mkdocs build --strict` into a fresh folder, started in the background."""

    def __init__(self) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="mha-site-"))
        self.log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would stall the build
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MHA_SITE_URL": SITE_URL}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(self.out / "site")],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    def result(self) -> Path:
        self.proc.wait(timeout=900)
        self.log.seek(0)
        output = self.log.read()
        assert self.proc.returncode == 0, output
        assert "WARNING" not in output, output
        return self.out / "site"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.out, ignore_errors=True)


_BUILDS: list[_Build] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the build as soon as the run knows a test needs it: it takes a minute or two of
    one core, which the package tests (run first, mostly on one core) leave free."""
    if session.config.option.collectonly:
        return
    if any("site" in getattr(item, "fixturenames", ()) for item in session.items):
        _BUILDS.append(_Build())


def pytest_sessionfinish(session: pytest.Session) -> None:
    for build in _BUILDS:
        build.close()


@pytest.fixture(scope="session")
def site() -> Path:
    if not _BUILDS:  # the hook did not see the test that needs it
        _BUILDS.append(_Build())
    return _BUILDS[0].result()


@pytest.fixture(scope="session")
def bases(site) -> Iterator[dict[str, str]]:
    """{"root": http://127.0.0.1:P/, "subpath": http://127.0.0.1:Q/mha/}: one build, two hosts."""
    with SiteServer(site, "/") as root, SiteServer(site, "/mha/") as sub:
        yield {"root": root.url, "subpath": sub.url}


@pytest.fixture(scope="session")
def server(bases) -> str:
    """The subpath deployment: the one that breaks absolute links."""
    return bases["subpath"]


# Material renders mermaid into a *closed* shadow root; open it so the test can look inside.
OPEN_SHADOW_ROOTS = """
const attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) { return attach.call(this, { ...init, mode: "open" }); };
document.addEventListener("copy", (event) => {
  const target = event.target;
  window.__copied = target && "value" in target ? target.value : String(document.getSelection());
}, true);
"""


class Browser:
    """One Chromium, a fresh context per page, external requests blocked and recorded."""

    def __init__(self, playwright) -> None:
        self.chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        self.blocked: list[str] = []

    def open(self, url: str, *, color_scheme: str = "light", width: int = DESKTOP, wait: str = "networkidle"):
        """A fresh context on `url`. `wait="load"` skips networkidle's half-second quiet
        window; crawls over every page use it and wait for what they check."""
        context = self.chromium.new_context(
            color_scheme=color_scheme,
            viewport={"width": width, "height": 900},
            is_mobile=width < 600,
            has_touch=width < 600,
        )
        context.add_init_script(OPEN_SHADOW_ROOTS)
        context.route("**/*", self._route)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: errors.append(f"failed: {req.url}"))
        page.on(
            "response",
            lambda res: errors.append(f"{res.status}: {res.url}") if res.status >= 400 and res.url != url else None,
        )
        page.goto(url, wait_until=wait)
        return page, errors

    def _route(self, route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", None):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = Browser(p)
        yield b
        b.chromium.close()
