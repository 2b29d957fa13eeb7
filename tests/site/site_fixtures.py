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
import signal
import subprocess
import sys
import tempfile
import time
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
    """`mkdocs build --strict` into a folder, started in the background.

    The build writes its log and then its exit status into the folder, so any process
    can wait for it: under pytest-xdist the controller starts the one build of the run
    and the workers read `MHA_TEST_SITE_BUILD` to find it."""

    ENV = "MHA_TEST_SITE_BUILD"

    def __init__(self, out: Path | None = None) -> None:
        self.proc: subprocess.Popen | None = None
        if out is not None:  # another process's build
            self.out = out
            return
        self.out = Path(tempfile.mkdtemp(prefix="mha-site-"))
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MHA_SITE_URL": SITE_URL}
        build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(self.out / "site")]
        self.proc = subprocess.Popen(
            # the status file appears only once the log is complete
            ["sh", "-c", '"$@" > "$0/log" 2>&1; echo $? > "$0/status.tmp" && mv "$0/status.tmp" "$0/status"']
            + [str(self.out), *build],
            cwd=ROOT,
            env=env,
            start_new_session=True,  # close() stops the shell and mkdocs together
        )

    def result(self) -> Path:
        status = self.out / "status"
        deadline = time.monotonic() + 900
        while not status.exists():
            gone = not self.out.exists() or (self.proc is not None and self.proc.poll() not in (None, 0))
            if gone or time.monotonic() > deadline:  # the folder goes when its owner stops the build
                raise AssertionError(f"the site build did not finish: {self.out}")
            time.sleep(0.2)
        output = (self.out / "log").read_text(encoding="utf-8")
        assert status.read_text().strip() == "0", output
        assert "WARNING" not in output, output
        return self.out / "site"

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.out, ignore_errors=True)


_BUILDS: list[_Build] = []


def _needs_the_site(config: pytest.Config) -> bool:
    """Whether the paths this run was given can reach a test that uses the built site.

    A run that selects within them (`-k`, `-m`, `--deselect`) builds only if a worker's
    site test asks for it (the `site` fixture)."""
    if config.option.keyword or config.option.markexpr or config.getoption("deselect", None):
        return False
    package_only = [ROOT / "tests" / "package", ROOT / "mha"]
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::", 1)[0]).resolve()
        if not any(path == p or p in path.parents for p in package_only):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, the controller starts the build before the workers exist: one
    build for the run, ready by the time a worker reaches a site test."""
    distributed = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
    if distributed and not config.option.collectonly and _needs_the_site(config):
        _BUILDS.append(_Build())
        os.environ[_Build.ENV] = str(_BUILDS[0].out)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without xdist, start the build as soon as the run knows a test needs it: it takes
    a core for a while, which the package tests (run first, mostly on one core) leave free.
    An xdist worker collects every test, whichever it will run: it builds in the fixture."""
    config = session.config
    if config.option.collectonly or _BUILDS or os.environ.get(_Build.ENV) or hasattr(config, "workerinput"):
        return
    if any("site" in getattr(item, "fixturenames", ()) for item in session.items):
        _BUILDS.append(_Build())


def pytest_sessionfinish(session: pytest.Session) -> None:
    for build in _BUILDS:
        build.close()


@pytest.fixture(scope="session")
def site() -> Path:
    if os.environ.get(_Build.ENV):  # the xdist controller's build
        return _Build(Path(os.environ[_Build.ENV])).result()
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


# A new tab starts with the localStorage of a new visitor: pages share a context (for its
# HTTP cache) but not what an earlier test stored (Material keeps the reader's palette there).
FRESH_STORAGE = """
if (window === window.top && !sessionStorage.getItem("__mha_test_tab")) {
  localStorage.clear();
  sessionStorage.setItem("__mha_test_tab", "1");
}
"""


class Browser:
    """One Chromium, external requests blocked and recorded.

    Each page opens in a new tab of a context shared by every page of its kind (phone or
    desktop), so the site's scripts, styles and fonts come from the HTTP cache after the
    first page: a fresh context per page spent about a second loading and compiling them
    again. Close a page with `page.close()`."""

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
        self._contexts: dict[bool, object] = {}
        self._views: dict[tuple, tuple] = {}

    def _context(self, phone: bool):
        if phone not in self._contexts:
            context = self.chromium.new_context(
                viewport={"width": PHONE if phone else DESKTOP, "height": 900}, is_mobile=phone, has_touch=phone
            )
            context.add_init_script(OPEN_SHADOW_ROOTS)
            context.add_init_script(FRESH_STORAGE)
            context.route("**/*", self._route)
            self._contexts[phone] = context
        return self._contexts[phone]

    def open(self, url: str, *, color_scheme: str = "light", width: int = DESKTOP, wait: str = "networkidle"):
        """A new tab on `url`, and the list of what went wrong loading it (console errors,
        failed requests, 4xx/5xx responses). `wait="load"` skips networkidle's half-second
        quiet window; tests that use it wait for what they check."""
        page = self._context(width < 600).new_page()
        page.set_viewport_size({"width": width, "height": 900})
        page.emulate_media(color_scheme=color_scheme)
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: errors.append(f"failed: {req.url}"))
        page.on(
            "response",
            # the opened document's own status (a 404 page's) is the test's to check
            lambda res: errors.append(f"{res.status}: {res.url}") if res.status >= 400 and res.url != url else None,
        )
        page.goto(url, wait_until=wait)
        return page, errors

    def view(self, url: str, *, color_scheme: str = "light", width: int = DESKTOP):
        """Like `open`, but the tab stays open for every test that asks for the same view: for
        checks that only read the page (a page with a diagram takes seconds to render). A test
        that clicks, scrolls or navigates uses `open`, and nobody closes a view."""
        key = (url, color_scheme, width)
        if key not in self._views:
            self._views[key] = self.open(url, color_scheme=color_scheme, width=width)
        return self._views[key]

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
