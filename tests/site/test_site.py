"""The documentation site: built strictly, served as a host would, checked in headless Chromium.

The same build is served twice, at a domain root (`/`) and under a subpath
(`/mha/`, as GitHub Pages serves a project site). Every request to a host
other than 127.0.0.1 is blocked and recorded, so a page that needs the
internet (a CDN, Google Fonts) fails here.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from site_fixtures import DESKTOP, LANGUAGES, PHONE, ROOT, SITE_URL

pytestmark = pytest.mark.browser


def _pages(site: Path) -> list[str]:
    """Every page of the built site, as a path relative to its root."""
    paths = []
    for html in sorted(site.rglob("index.html")):
        rel = html.parent.relative_to(site).as_posix()
        paths.append("" if rel == "." else rel + "/")
    return paths


class _Links(HTMLParser):
    """href/src of every element, and the ids the page defines."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        for name in ("href", "src"):
            if attrs.get(name) and not (tag == "link" and attrs.get("rel") in ("canonical",)):
                self.links.append(attrs[name])
        if attrs.get("id"):
            self.ids.add(attrs["id"])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# --- the build ----------------------------------------------------------------


def test_build_references_no_other_host(site):
    """Nothing that a browser loads (scripts, styles, images, frames) names another host.

    The canonical link names the published address on purpose; nothing loads it."""
    tag = re.compile(r"<(?:script|link|img|iframe)\b[^>]*>", re.I)
    remote = re.compile(r"""(?:src|href)=["'](?:https?:)?//([^/"']+)""", re.I)
    for html in site.rglob("*.html"):
        for element in tag.findall(html.read_text(encoding="utf-8")):
            host = remote.search(element)
            if host and 'rel="canonical"' not in element:
                raise AssertionError(f"{html.relative_to(site)} loads from {host[1]}: {element}")


def test_no_absolute_paths_in_pages(site):
    """Links relative to the page work at any base URL; '/x' would leave a subpath."""
    for html in site.rglob("index.html"):
        text = html.read_text(encoding="utf-8")
        absolute = re.findall(r"""(?:href|src)=["'](/[^/"'][^"']*)""", text)
        assert not absolute, f"{html.relative_to(site)}: {absolute[:5]}"


def test_canonical_links_and_sitemap_use_site_url(site):
    pages = _pages(site)
    for path in pages:
        text = (site / path / "index.html").read_text(encoding="utf-8")
        canonical = re.search(r'<link (?=[^>]*rel="canonical")[^>]*href="([^"]+)"', text)
        assert canonical and canonical[1] == SITE_URL + path, (path, canonical and canonical[1])
    listed = re.findall(r"<loc>([^<]+)</loc>", (site / "sitemap.xml").read_text(encoding="utf-8"))
    assert sorted(listed) == sorted(SITE_URL + p for p in pages)


def test_api_examples_are_code_blocks(site):
    api = sorted((site / "api").rglob("index.html"))
    assert len(api) >= 8
    examples = 0
    for html in api:
        text = html.read_text(encoding="utf-8")
        assert "<blockquote>" not in text, f"{html.relative_to(site)} renders a docstring as quotes"
        blocks = re.findall(r'<div class="language-pycon highlight"><pre>(.*?)</pre>', text, re.S)
        examples += sum("&gt;&gt;&gt;" in b for b in blocks)
    assert examples >= 20, examples


def test_404_pages_per_language(site):
    en = (site / "404.html").read_text(encoding="utf-8")
    zh = (site / "zh" / "404.html").read_text(encoding="utf-8")
    # The page is shipped as a JSON string (see docs/_hooks/site_root.py): quotes are escaped.
    assert '<html lang=\\"en\\"' in en and '<html lang=\\"zh-Hans\\"' in zh
    assert "教程" in zh and "教程" not in en


def test_search_index_per_language(site):
    en = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    zh = json.loads((site / "zh" / "search" / "search_index.json").read_text(encoding="utf-8"))
    cjk = re.compile(r"[\u4e00-\u9fff]")
    assert en["docs"] and not any(cjk.search(d["title"]) for d in en["docs"])
    assert zh["docs"] and all(not d["location"].startswith("zh/") for d in zh["docs"])
    assert not any("\u200b" in d["title"] for d in zh["docs"])
    assert any(cjk.search(d["title"]) for d in zh["docs"])


def test_chinese_headings_have_meaningful_ids(site):
    for html in (site / "zh").rglob("index.html"):
        ids = re.findall(r'<h[1-6] id="([^"]+)"', html.read_text(encoding="utf-8"))
        meaningless = [i for i in ids if re.fullmatch(r"_\d*", i)]
        assert not meaningless, f"{html.relative_to(site)}: {meaningless}"


def test_every_stylesheet_once(site):
    for html in site.rglob("index.html"):
        sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html.read_text(encoding="utf-8"))
        assert len(sheets) == len(set(sheets)), f"{html.relative_to(site)}: {sheets}"


# --- served at a root and under a subpath --------------------------------------


@pytest.mark.parametrize("where", ["root", "subpath"])
def test_no_broken_links_or_assets(site, bases, where):
    """Every href and src of every page (switchers, nav, assets) resolves, at both bases."""
    base = bases[where]
    checked: dict[str, int] = {}
    broken = []
    for path in _pages(site):
        parser = _Links()
        parser.feed((site / path / "index.html").read_text(encoding="utf-8"))
        for link in parser.links:
            url = urljoin(base + path, link)
            if urlsplit(url).hostname != "127.0.0.1":
                continue
            target = url.split("#", 1)[0]
            if target not in checked:
                checked[target] = _status(target)
            if checked[target] != 200:
                broken.append(f"{path} -> {link} ({checked[target]})")
    assert not broken, broken
    assert len(checked) > 40


def _layout_problems(page) -> list[str]:
    """Page wider than the screen, or a display formula clipped without a scrollbar."""
    return page.evaluate(
        """() => {
        const problems = [];
        const width = document.documentElement.clientWidth;
        if (document.documentElement.scrollWidth > width + 1)
            problems.push(`page is ${document.documentElement.scrollWidth}px wide in ${width}px`);
        for (const f of document.querySelectorAll('.katex-display')) {
            const style = getComputedStyle(f);
            if (f.scrollWidth > f.clientWidth + 1 && !['auto', 'scroll'].includes(style.overflowX))
                problems.push(`formula clipped: ${f.scrollWidth}px in ${f.clientWidth}px`);
            if (f.getBoundingClientRect().right > width + 1)
                problems.push('formula runs off the screen');
        }
        return problems;
    }"""
    )


@pytest.fixture(scope="module")
def crawl(site, bases, browser) -> dict[str, dict]:
    """Every page loaded once, for the two tests that read every page: on a phone, then the
    window widens to a desktop's; the pages alternate between the two bases (every href and
    src is checked at both by test_no_broken_links_or_assets). Per page: its title, what went
    wrong loading it, its layout problems at each width, and what each >>> block's copy
    button copies (None on a page without such blocks)."""
    seen, tabs = {}, {}
    for i, path in enumerate(_pages(site)):
        base = ("subpath", "root")[i % 2]
        if base not in tabs:  # one tab per base, going from page to page as a reader does
            tabs[base] = browser.open(bases[base] + path, width=PHONE, wait="load")
        page, errors = tabs[base]
        if page.url != bases[base] + path:
            # Leave the last page first: a request it still had loading fails now, and
            # that is not the next page's error (closing its tab would drop it too).
            page.goto("about:blank")
            errors.clear()
            page.set_viewport_size({"width": PHONE, "height": 900})
            page.goto(bases[base] + path, wait_until="load")
        if page.locator(".arithmatex").count():
            page.wait_for_function("() => !document.querySelector('.arithmatex:not(:has(.katex))')")
        problems = []
        for width in (PHONE, DESKTOP):
            page.set_viewport_size({"width": width, "height": 900})
            problems += [f"at {width}px: {problem}" for problem in _layout_problems(page)]
        copied = None
        if "language-pycon" in (site / path / "index.html").read_text(encoding="utf-8"):
            page.wait_for_selector("button[data-md-type=copy]", state="attached")
            copied = page.evaluate(COPY_ALL)
        seen[path] = {"title": page.title(), "errors": list(errors), "problems": problems, "copied": copied}
    for page, _ in tabs.values():
        page.close()
    return seen


def test_every_page_loads_cleanly(crawl, browser):
    """No console error, failed request or external request; nothing wider than the screen,
    on a phone or a desktop."""
    assert "class-diagram/" in crawl and "zh/class-diagram/" in crawl
    for path, seen in crawl.items():
        assert seen["title"], path
        assert not seen["errors"], f"{path}: {seen['errors']}"
        assert not seen["problems"], f"{path}: {seen['problems']}"
    assert not browser.blocked, f"requests to other hosts: {browser.blocked}"


@pytest.mark.parametrize("where", ["root", "subpath"])
@pytest.mark.parametrize(("missing", "lang"), [("no/such/page/", "en"), ("zh/404.html", "zh-Hans")])
def test_404_page_is_styled_at_any_base(bases, browser, where, missing, lang):
    page, errors = browser.open(bases[where] + missing)
    assert page.evaluate("document.documentElement.lang") == lang
    # Material's stylesheet loaded: the header has its fixed position.
    assert page.evaluate("getComputedStyle(document.querySelector('.md-header')).position") == "sticky"
    # The browser reports the page's own 404 status once; nothing else may fail.
    assert errors in ([], ["Failed to load resource: the server responded with a status of 404 (Not Found)"]), errors
    home = page.locator("a.md-header__button.md-logo").get_attribute("href")
    assert _status(urljoin(page.evaluate("document.baseURI"), home)) == 200
    page.close()


def _diagram(page):
    page.wait_for_function(
        "() => { const d = document.querySelector('div.mermaid, pre.mermaid');"
        " return d && d.shadowRoot && d.shadowRoot.querySelector('svg'); }",
        timeout=20000,
    )


def _diagram_text(page) -> str:
    _diagram(page)
    return page.evaluate("() => document.querySelector('div.mermaid').shadowRoot.querySelector('svg').textContent")


def _smallest_class_name_px(page) -> float:
    """Rendered height in CSS px of the smallest class-name label in the diagram."""
    _diagram(page)
    return page.evaluate(
        """() => {
        const root = document.querySelector('div.mermaid').shadowRoot;
        const labels = [...root.querySelectorAll('g.classGroup .label-group, g.node .label-group')]
            .map(g => g.querySelector('span, text, p')).filter(Boolean);
        const heights = labels.map(el => {
            const size = parseFloat(getComputedStyle(el).fontSize);
            const svg = el.closest('svg');
            const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
            return size * scale;
        });
        return heights.length ? Math.min(...heights) : 0;
    }"""
    )


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_class_diagram_renders_as_svg(server, browser, lang, scheme):
    page, errors = browser.view(f"{server}{LANGUAGES[lang]}class-diagram/", color_scheme=scheme)
    text = _diagram_text(page)
    for name in ("Attention", "MultiHeadAttention", "hidden_size", "num_heads", "forward", "KVCache"):
        assert name in text, f"{name} not drawn"
    expected_scheme = "slate" if scheme == "dark" else "default"
    assert page.evaluate("document.body.getAttribute('data-md-color-scheme')") == expected_scheme
    assert not errors and not browser.blocked


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
@pytest.mark.parametrize("path", ["class-diagram/", "zh/class-diagram/"])
def test_class_diagram_text_is_readable(server, browser, width, path):
    page, _ = browser.view(server + path, width=width)
    assert _smallest_class_name_px(page) >= 12
    # The diagram scrolls inside its box; the page itself stays within the screen.
    assert not _layout_problems(page)


COPY_ALL = """async () => {
    // A reader opens a collapsed solution before copying it.
    document.querySelectorAll('details').forEach((d) => { d.open = true; });
    const texts = [];
    for (const block of document.querySelectorAll('.language-pycon')) {
        window.__copied = undefined;
        block.querySelector('button[data-md-type=copy]').click();
        for (let i = 0; i < 100 && window.__copied === undefined; i++)
            await new Promise(r => setTimeout(r, 10));
        texts.push(window.__copied);
    }
    return texts;
}"""

RUN_PAGES = """
import code, contextlib, io, json, sys, traceback

class Paste(code.InteractiveConsole):
    \"\"\"The classic `python` REPL: a blank line ends a class, a dedented line inside one is an error.

    It compiles each statement exactly as the REPL does when the reader pastes
    line by line (what breaks a paste is where a statement ends); it does not
    run them a second time.\"\"\"

    def __init__(self):
        super().__init__({"__name__": "__main__"})
        self.errors = []

    def runcode(self, code):
        pass  # the script pass below runs every statement; this pass checks how a paste splits them

    def showsyntaxerror(self, filename=None, **kwargs):
        self.errors.append(traceback.format_exc(limit=-3))

    def showtraceback(self):
        self.errors.append(traceback.format_exc(limit=-3))

failures = {}
# argv[2], if given, names the pages to run as scripts; pytest already runs the others' code (doctests).
scripts = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else None
for page, blocks in json.load(open(sys.argv[1])).items():
    try:  # the page's blocks, in order, as one script (what `python -c` runs)
        if scripts is None or page in scripts:
            exec(compile("\\n".join(blocks), page, "exec"), {"__name__": "__main__"})
    except BaseException:
        failures[page + " (script)"] = traceback.format_exc(limit=-3)
    console = Paste()
    with contextlib.redirect_stdout(io.StringIO()):  # the REPL echoes every expression
        for block in blocks:  # pasted line by line; after the last line the reader presses Enter
            more = False
            for line in block.split("\\n"):
                more = console.push(line)
            if more:
                console.push("")
            if console.errors:
                failures[page + " (REPL)"] = block + "\\n" + console.errors[0]
                break
print(json.dumps(failures))
"""


DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")


def _code_lines(code: str) -> list[str]:
    """The lines that make up a program: no blank lines, trailing spaces or doctest directives."""
    return [DIRECTIVE.sub("", line).rstrip() for line in code.splitlines() if line.strip()]


def _doctested_code(path: str) -> list[str] | None:
    """The code of the `>>>` examples of the Markdown a page is built from, which pytest runs as a
    doctest (`--doctest-glob='*.md'`, one namespace per file, in order: as a script would), or None
    when the page's source has no examples (the API reference renders docstrings)."""
    zh = path.startswith("zh/")
    stem = path.removeprefix("zh/").rstrip("/") or "index"
    src = ROOT / "docs" / (stem + (".zh.md" if zh else ".md"))
    if not src.exists():
        return None
    examples = doctest.DocTestParser().get_examples(src.read_text(encoding="utf-8"), str(src))
    assert not any(e.options.get(doctest.SKIP) for e in examples), f"{src}: a skipped example never runs"
    return _code_lines("".join(e.source for e in examples)) if examples else None


def test_every_copied_block_runs(crawl, tmp_path):
    """Each >>> block as its button copies it (in the crawl); each page's blocks, in order, run as one script,
    and pasted line by line into `code.InteractiveConsole`, the plain `python` REPL.

    A page built from Markdown whose examples pytest runs as doctests is not run a second time:
    its copied code must be exactly the doctest's code, which runs. The other pages (the API
    reference) run as scripts."""
    pasted, scripts = {}, []
    for path, seen in crawl.items():
        copied = seen["copied"]
        if copied is None:
            continue
        assert all(isinstance(c, str) for c in copied), f"{path}: a copy button copied nothing"
        for text in copied:
            assert ">>>" not in text and not re.search(r"^\.\.\. ", text, re.M), f"{path}: prompt copied"
            assert "Traceback" not in text, f"{path}: a traceback was copied"
        pasted[path] = copied
        doctested = _doctested_code(path)
        if doctested is None:
            scripts.append(path)
        else:
            assert _code_lines("\n".join(copied)) == doctested, f"{path}: the copied code is not the doctest's"
    assert len(pasted) >= 20 and "" in pasted and scripts
    assert any("output = mha(input)" in block for block in pasted[""])
    pages = tmp_path / "pages.json"
    pages.write_text(json.dumps(pasted))
    (tmp_path / "scripts.json").write_text(json.dumps(scripts))
    runner = tmp_path / "run_pages.py"
    runner.write_text(RUN_PAGES)
    # The checkout's mha, whatever else is installed.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, str(runner), str(pages), str(tmp_path / "scripts.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    failures = json.loads(run.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{p}:\n{t}" for p, t in failures.items())


def test_repl_paste_check_catches_blank_lines_in_a_class(tmp_path):
    """The runner above fails a class whose copied body has a blank line (the classic REPL's
    IndentationError) or that runs into the next statement, and passes it written for the REPL."""
    body = "class A:\n    def f(self):\n        return 1\n{}    def g(self):\n        return 2\n{}assert A().g() == 2"
    pages = {
        "blank inside": [body.format("\n", "\n")],
        "no blank after": [body.format("", "")],
        "fine": [body.format("", "\n")],
    }
    (tmp_path / "pages.json").write_text(json.dumps(pages))
    (tmp_path / "run.py").write_text(RUN_PAGES)
    run = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "pages.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    failures = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(failures) == ["blank inside (REPL)", "no blank after (REPL)"], failures


@pytest.mark.parametrize(
    ("lang", "query", "expected", "foreign"),
    [
        ("en", "MultiHeadAttention", "MultiHeadAttention", re.compile(r"[\u4e00-\u9fff]")),
        ("en", "diagram", "Class diagram", re.compile(r"[\u4e00-\u9fff]")),
        ("zh", "查看注意力权重", "注意力权重", None),
    ],
)
def test_search_finds_in_the_readers_language(server, browser, lang, query, expected, foreign):
    page, errors = browser.open(server + LANGUAGES[lang])
    search = page.locator("input.md-search__input")
    search.click()
    search.press_sequentially(query, delay=20)
    # Material searches on key events; characters typed through an input method
    # (Chinese) produce none, so end with a real key press.
    search.press("End")
    results = page.locator(".md-search-result__item")
    results.first.wait_for(timeout=15000)
    titles = page.locator(".md-search-result__item h1, .md-search-result__item h2").all_inner_texts()
    links = page.eval_on_selector_all(".md-search-result__link", "els => els.map(e => e.href)")
    assert any(expected in t for t in titles), titles
    assert not any("\u200b" in t for t in titles), titles
    if foreign:
        assert not any(foreign.search(t) for t in titles), titles
    if lang == "zh":
        assert all("/zh/" in link for link in links), links
    else:
        assert not any("/zh/" in link for link in links), links
    assert not errors
    page.close()


@pytest.mark.parametrize("where", ["root", "subpath"])
@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("tutorial/", "zh/tutorial/"),
        ("zh/guides/masks/", "guides/masks/"),
        ("", "zh/"),
        ("zh/", ""),
        ("api/attention/", "zh/"),
    ],
)
def test_language_switcher_lands_on_the_counterpart_page(bases, browser, where, start, target):
    page, _ = browser.open(bases[where] + start, wait="load")  # the switcher is in the HTML itself
    page.locator(".md-header__option .md-select").first.hover()
    link = page.locator(".md-select__link", has_text="中文" if target.startswith("zh") else "English")
    link.first.click()
    page.wait_for_url(bases[where] + target, wait_until="load")  # raises if it lands elsewhere
    assert page.url == bases[where] + target
    page.close()


def test_screenshots(server, browser):
    """Screenshots for a person to look at; written under SCREENSHOTS_DIR when set."""
    out = os.environ.get("SCREENSHOTS_DIR")
    if not out:
        pytest.skip("set SCREENSHOTS_DIR to write screenshots")
    Path(out).mkdir(parents=True, exist_ok=True)
    names = os.environ.get("SCREENSHOT_PAGES", "|tutorial/|class-diagram/|api/attention/|zh/|zh/tutorial/").split("|")
    for name in names:
        for scheme in ("light", "dark"):
            for width in (DESKTOP, PHONE):
                page, _ = browser.open(server + name, color_scheme=scheme, width=width)
                if "class-diagram" in name:
                    _diagram(page)
                page.wait_for_timeout(300)
                label = name.strip("/").replace("/", "-") or "home"
                page.screenshot(path=f"{out}/{label}-{scheme}-{width}.png", full_page=True)
                page.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_tutorial_teaches_the_seed(server, browser, lang, scheme):
    """Both class definitions, the seed's diagram as SVG, the figures and the exercises."""
    page, errors = browser.view(f"{server}{LANGUAGES[lang]}tutorial/", color_scheme=scheme)
    code = "\n".join(page.locator(".language-pycon code").all_inner_texts())
    for definition in (
        "class Attention(nn.Module):",
        "class MultiHeadAttention(nn.Module):",
        "self.attention = Attention(hidden_size, num_heads)",
        "mha = MultiHeadAttention(hidden_size, num_heads, dropout)",
        "output = mha(input)",
    ):
        assert definition in code, definition
    seed_diagram = _diagram_text(page)
    for drawn in ("Attention", "MultiHeadAttention", "hidden_size", "num_heads", "forward(inputs)"):
        assert drawn in seed_diagram, drawn
    figures = page.locator("figure.mha-figure svg")
    assert figures.count() == 3
    # Figure text is drawn in the palette's foreground colour, so it shows in both schemes.
    fill = page.evaluate("getComputedStyle(document.querySelector('.fig-text')).fill")
    body = page.evaluate("getComputedStyle(document.querySelector('.md-typeset')).color")
    assert fill == body, (fill, body)
    label = "拆分注意力头" if lang == "zh" else "split heads"
    assert label in figures.first.inner_html()
    exercises = page.locator("details.success")
    assert exercises.count() >= 4
    assert "arxiv.org/abs/1706.03762" in page.content()
    assert not errors and not browser.blocked
