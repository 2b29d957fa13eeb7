"""The documentation site: built strictly, served locally, checked in headless Chromium.

Every request to a host other than 127.0.0.1 is blocked and recorded, so a
page that needs the internet (a CDN, Google Fonts) fails here.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
LANGUAGES = {"en": "", "zh": "zh/"}

pytestmark = pytest.mark.browser


def _require_browser() -> None:
    missing = [what for what, ok in (("chromium", Path(CHROMIUM).exists()), ("playwright", _has_playwright())) if not ok]
    if missing and os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} missing: .ci/setup installs them")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (run bash .ci/setup)")


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


@pytest.fixture(scope="session")
def server(site) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


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
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        self.blocked: list[str] = []

    def open(self, url: str, *, color_scheme: str = "light"):
        context = self.chromium.new_context(color_scheme=color_scheme, viewport={"width": 1280, "height": 900})
        context.add_init_script(OPEN_SHADOW_ROOTS)
        context.route("**/*", self._route)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url, wait_until="networkidle")
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


def _pages(site: Path) -> list[str]:
    """Every page of the built site, as a path relative to its root."""
    paths = []
    for html in sorted(site.rglob("index.html")):
        rel = html.parent.relative_to(site).as_posix()
        paths.append("" if rel == "." else rel + "/")
    return paths


def test_build_references_no_other_host(site):
    pattern = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*?(?:src|href)=["'](https?:)?//([^/"']+)""", re.I)
    for html in site.rglob("*.html"):
        for _, host in pattern.findall(html.read_text(encoding="utf-8")):
            assert host.startswith("127.0.0.1"), f"{html.relative_to(site)} loads from {host}"


def test_every_page_loads_without_errors_or_external_requests(site, server, browser):
    pages = _pages(site)
    assert "class-diagram/" in pages and "zh/class-diagram/" in pages
    for path in pages:
        page, errors = browser.open(server + path)
        assert page.title(), path
        assert not errors, f"{path}: {errors}"
        page.context.close()
    assert not browser.blocked, f"requests to other hosts: {browser.blocked}"


def _diagram_text(page) -> str:
    page.wait_for_function(
        "() => { const d = document.querySelector('div.mermaid, pre.mermaid');"
        " return d && d.shadowRoot && d.shadowRoot.querySelector('svg'); }",
        timeout=20000,
    )
    return page.evaluate("() => document.querySelector('div.mermaid, pre.mermaid').shadowRoot.querySelector('svg').textContent")


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_class_diagram_renders_as_svg(server, browser, lang, scheme):
    page, errors = browser.open(f"{server}{LANGUAGES[lang]}class-diagram/", color_scheme=scheme)
    text = _diagram_text(page)
    for name in ("Attention", "MultiHeadAttention", "hidden_size", "num_heads", "forward", "KVCache"):
        assert name in text, f"{name} not drawn"
    expected_scheme = "slate" if scheme == "dark" else "default"
    assert page.evaluate("document.body.getAttribute('data-md-color-scheme')") == expected_scheme
    assert not errors and not browser.blocked
    page.context.close()


def test_copy_button_gives_prompt_free_code_that_runs(server, browser, tmp_path):
    page, _ = browser.open(server)
    block = page.locator(".language-pycon").first
    block.hover()
    block.locator("button[data-md-type=copy], button.md-clipboard").first.click()
    page.wait_for_function("() => window.__copied !== undefined", timeout=5000)
    code = page.evaluate("window.__copied")
    page.context.close()
    assert ">>>" not in code and "..." not in code
    assert "torch.Size" not in code  # printed output is not copied
    assert "output = mha(input)" in code
    script = tmp_path / "snippet.py"
    script.write_text(code + "\nprint(tuple(output.shape))\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(2, 10, 64)"


@pytest.mark.parametrize(("lang", "query", "expected"), [("en", "MultiHeadAttention", "MultiHeadAttention"), ("zh", "注意力权重", "注意力权重")])
def test_search_finds(server, browser, lang, query, expected):
    page, errors = browser.open(server + LANGUAGES[lang])
    search = page.locator("input.md-search__input")
    search.click()
    search.press_sequentially(query, delay=20)
    # Material searches on key events; characters typed through an input method
    # (Chinese) produce none, so end with a real key press.
    search.press("End")
    results = page.locator(".md-search-result__item")
    results.first.wait_for(timeout=15000)
    # Chinese text is indexed with jieba's word breaks (U+200B) between words.
    texts = [t.replace("\u200b", "") for t in results.all_inner_texts()]
    assert any(expected in t for t in texts), texts
    assert not errors
    page.context.close()


@pytest.mark.parametrize(("start", "target"), [("tutorial/", "zh/tutorial/"), ("zh/guides/masks/", "guides/masks/")])
def test_language_switcher_lands_on_the_counterpart_page(server, browser, start, target):
    page, _ = browser.open(server + start)
    page.locator(".md-header__option .md-select").first.hover()
    link = page.locator(".md-select__link", has_text="中文" if target.startswith("zh") else "English")
    link.first.click()
    page.wait_for_load_state("networkidle")
    assert page.url == server + target
    page.context.close()


def test_screenshots(server, browser, request):
    """Screenshots for a person to look at; written under SCREENSHOTS_DIR when set."""
    out = os.environ.get("SCREENSHOTS_DIR")
    if not out:
        pytest.skip("set SCREENSHOTS_DIR to write screenshots")
    Path(out).mkdir(parents=True, exist_ok=True)
    for lang, prefix in LANGUAGES.items():
        names = ["", "tutorial/", "class-diagram/", "guides/masks/", "guides/attention-weights/", "guides/performance/"]
        for name in names + (["api/attention/"] if lang == "en" else []):  # the API reference is English only
            for scheme in ("light", "dark"):
                page, _ = browser.open(server + prefix + name, color_scheme=scheme)
                if name == "class-diagram/":
                    _diagram_text(page)
                page.wait_for_timeout(300)
                label = (name.strip("/").replace("/", "-") or "home")
                page.screenshot(path=f"{out}/{lang}-{label}-{scheme}.png", full_page=name in ("", "class-diagram/"))
                page.context.close()
    assert len(list(Path(out).glob("*.png"))) == (6 + 7) * 2
