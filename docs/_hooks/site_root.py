"""MkDocs hook: a built site that works at any base URL, with one 404 page per language.

Every page links relative to itself, so the same build works at a domain
root and under a subpath (a GitHub Pages project site,
https://USER.github.io/mha/). Two outputs cannot be relative:

* **404 pages** are served at whatever URL was missed, so MkDocs renders them
  with absolute links from `site_url`'s path (`/mha/assets/...`). Here they
  get site-root-relative links and a `<base>` chosen in the browser before
  anything loads: `site_url`'s path when the address starts with it, else
  `/`. With mkdocs-static-i18n every language build writes `404.html` to the
  same place, the last one (Chinese) winning; here each language's page is
  kept and written to its own folder: `404.html` and `zh/404.html`.
* **The sitemap** lists the pages that were built, as absolute `site_url`
  addresses. The i18n plugin's sitemap lists Chinese API pages that are never
  built (docs/_hooks/english_api.py drops them).

The final step runs after the last language build (see `on_post_build`).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from site_build import default_language, language, nested_language_build, site_path

# language -> rendered 404.html, collected as each language build renders it
_NOT_FOUND: dict[str, str] = {}

# A 404 page is served at whatever address was missed, so relative links need a
# <base> chosen in the browser. A <base> inserted by a script comes too late for
# the browser's preload scanner, which has already requested the stylesheets
# against the wrong address; so the page is shipped as a string and written
# out with the <base> as its first element.
_SHELL = """<!doctype html>
<meta charset="utf-8">
<script>(function () {
  var prefix = %(prefix)s, page = %(page)s;
  var root = location.pathname.indexOf(prefix) === 0 ? prefix : "/";
  document.write(page.replace("<head>", '<head><base href="' + root + '">'));
})();</script>
<noscript><p>%(message)s <a href="%(prefix_html)s">%(home)s</a></p></noscript>
"""

# Material reads its base URL from #__config and resolves it against the
# address, not against <base>; point it at the <base> before the bundle runs.
_CONFIG_SCRIPT = """<script>(function () {
  var node = document.getElementById("__config"), config = JSON.parse(node.textContent);
  config.base = document.baseURI;
  node.textContent = JSON.stringify(config);
})();</script>"""


def on_post_template(output: str, template_name: str, config: MkDocsConfig) -> str:
    if template_name == "404.html":
        _NOT_FOUND[language(config)] = output
    return output


def relocatable_404(html: str, site_path: str) -> str:
    """A 404 page that finds the site root in the browser and links relative to it."""
    prefix = re.escape(site_path)
    # Material fetches a sitemap next to each alternate link; the switcher has the links.
    html = re.sub(r'\s*<link rel="alternate" href="[^"]*" hreflang="[^"]*">', "", html)
    # The scope of Material's stored preferences (palette, consent): the site root.
    html = html.replace(f"new URL({json.dumps(site_path)},location)", "new URL(document.baseURI)")
    # href="/mha/assets/x.css" -> href="assets/x.css"; href="/mha/" -> href="./"
    html = re.sub(rf'((?:href|src)=")({prefix})([^"]*")', lambda m: m[1] + (m[3] if m[3] != '"' else './"'), html)
    html = re.sub(r'("(?:base|search)": ")' + re.escape(site_path.rstrip("/") or "/") + r"/?", r"\1", html)
    config_end = html.index("</script>", html.index('id="__config"')) + len("</script>")
    html = html[:config_end] + _CONFIG_SCRIPT + html[config_end:]
    chinese = '<html lang="zh' in html
    return _SHELL % {
        "prefix": json.dumps(site_path),
        "page": json.dumps(html, ensure_ascii=False).replace("</", "<\\/"),
        "prefix_html": site_path,
        "message": "页面不存在。" if chinese else "Page not found.",
        "home": "回到首页" if chinese else "Go to the home page",
    }


def _sitemap(site_dir: Path, site_url: str) -> str:
    pages = sorted(p.parent.relative_to(site_dir).as_posix() for p in site_dir.rglob("index.html"))
    urls = "\n".join(f"  <url><loc>{site_url}{'' if page == '.' else page + '/'}</loc></url>" for page in pages)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
        f"{urls}\n</urlset>\n"
    )


@event_priority(-200)  # after mkdocs-static-i18n (-100) has built the other languages
def on_post_build(config: MkDocsConfig) -> None:
    if nested_language_build(config):
        return  # the outer build finishes the site
    site_dir = Path(config.site_dir)
    prefix = site_path(config)
    default = default_language(config)
    for locale, html in _NOT_FOUND.items():
        folder = site_dir if locale == default else site_dir / locale
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "404.html").write_text(relocatable_404(html, prefix), encoding="utf-8")
    _NOT_FOUND.clear()
    site_url = config.site_url or "/"
    sitemap = _sitemap(site_dir, site_url if site_url.endswith("/") else site_url + "/")
    (site_dir / "sitemap.xml").write_text(sitemap, encoding="utf-8")
    with open(site_dir / "sitemap.xml.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(sitemap.encode())
