"""MkDocs hook: the language switcher links to the same page in the other language.

mkdocs-static-i18n computes, for every page, the URL of the same page in each
language and stores the list in `config.extra.alternate`. Material for MkDocs
renders that list twice: as the switcher's links, and as
`<link rel="alternate">` tags in the head. For the head tags Material fetches
`sitemap.xml` relative to each link, assuming it is a language root, and then
reroutes switcher clicks through that sitemap: per-page links give a 404 in the
console on every page, and language roots send every click to the other
language's home page (its sitemap names the site by the `site_url` host and
port, not the one serving it).

So the per-page list goes to the switcher only, as `page_alternates` (read by
docs/_overrides/partials/alternate.html), and `config.extra.alternate` is
replaced by a marker that is true (the header still includes the switcher) but
not iterable (the head gets no alternate tags, so nothing is fetched or
rerouted). Pages built in English only (the API reference) switch to the other
language's home page.

Every link is kept relative to the site root ("zh/tutorial/", never
"/zh/tutorial/"), so MkDocs' `url` filter turns it into a path relative to the
page: the site then works under any base URL, e.g. a GitHub Pages project
site at https://USER.github.io/mha/. The Chinese navigation's link to the
English API reference is made relative the same way.
"""

from __future__ import annotations

from copy import deepcopy

from mkdocs.plugins import event_priority
from mkdocs.structure.nav import Link
from site_build import site_path

ENGLISH_ONLY = ("api/",)


def _site_relative(link: str, prefix: str) -> str:
    """'/mha/zh/tutorial/' -> 'zh/tutorial/' for site_url path '/mha/'; the root -> './'."""
    if link.startswith(prefix):
        link = link[len(prefix) :]
    return link.lstrip("/") or "./"


class SwitcherOnly:
    """True, so Material shows the switcher; not iterable, so it writes no head tags.

    `roots` (the language home pages) serve templates rendered without a page
    context, such as 404.html.
    """

    def __init__(self, roots: list[dict]) -> None:
        self.roots = roots

    def __bool__(self) -> bool:
        return True


@event_priority(-100)  # after mkdocs-static-i18n has set the per-page links
def on_page_context(context, page, config, nav):
    i18n = config.plugins.get("i18n")
    roots = getattr(i18n, "extra_alternate", None)
    if not roots:
        return context
    # The plugin sets the per-page list as an attribute, which Jinja reads
    # before the mapping item, so read and write the attribute too.
    prefix = site_path(config)
    per_page = deepcopy(getattr(config.extra, "alternate", None) or roots)
    relative_roots = deepcopy(roots)
    for root in relative_roots:
        root["link"] = _site_relative(root["link"], prefix)
    for alt, root in zip(per_page, relative_roots, strict=True):
        alt["link"] = _site_relative(alt["link"], prefix)
        target = alt["link"].removeprefix(f"{alt['lang']}/")
        if alt["lang"] != i18n.default_language and target.startswith(ENGLISH_ONLY):
            alt["link"] = root["link"]
    context["page_alternates"] = per_page
    config.extra.alternate = SwitcherOnly(relative_roots)
    return context


def on_nav(nav, config, files):
    """Make absolute links in the navigation ("/api/") relative to the site root."""
    for item in _walk(nav.items):
        if isinstance(item, Link) and item.url.startswith("/") and not item.url.startswith("//"):
            item.url = _site_relative(item.url, "/")
    return nav


def _walk(items):
    for item in items:
        yield item
        yield from _walk(getattr(item, "children", None) or [])
