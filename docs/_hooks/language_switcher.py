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
"""

from __future__ import annotations

from copy import deepcopy

from mkdocs.plugins import event_priority

ENGLISH_ONLY = ("api/",)


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
    per_page = deepcopy(getattr(config.extra, "alternate", None) or roots)
    for alt, root in zip(per_page, roots):
        target = alt["link"].lstrip("/").removeprefix(f"{alt['lang']}/")
        if alt["lang"] != i18n.default_language and target.startswith(ENGLISH_ONLY):
            alt["link"] = root["link"]
    context["page_alternates"] = per_page
    config.extra.alternate = SwitcherOnly(deepcopy(roots))
    return context
