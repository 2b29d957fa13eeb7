"""MkDocs hook: each language is a site of its own for the reader.

mkdocs-static-i18n builds the Chinese pages into `zh/` with the site root as
their base, which leaves three things to put right:

* **Search**: it merges every language into one index, so an English query
  lists Chinese pages and the reverse. Here the index is split in two,
  `search/search_index.json` (English) and `zh/search/search_index.json`
  (Chinese, locations relative to `zh/`), and each Chinese page's search base
  points at `zh/`. Chinese titles lose the zero-width spaces that jieba puts
  between words for the index (they stay in the text, where they split words).
* **`lang`**: Material writes `lang="zh"` (and the language switcher
  `hreflang="zh"`); the pages are Simplified Chinese, `zh-Hans`.
* **Stylesheets**: every language build runs mkdocstrings' `on_config` again,
  which appends `assets/_mkdocstrings.css` once more; keep each stylesheet once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from site_build import default_language, language, nested_language_build, other_languages

HTML_LANG = {"zh": "zh-Hans"}
ZWSP = "\u200b"


@event_priority(-100)  # after mkdocstrings has added its stylesheet
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    seen: set[str] = set()
    unique = []
    for sheet in config.extra_css:
        if str(sheet) not in seen:
            seen.add(str(sheet))
            unique.append(sheet)
    config.extra_css[:] = unique
    return config


def _html_lang(output: str, locale: str) -> str:
    """`lang="zh"` -> `lang="zh-Hans"` on `<html>` and `hreflang="zh"` on every link, for the
    locales in HTML_LANG. Matched inside the tag whatever the attributes' order: mermaid2
    re-serialises the pages with a diagram as `<html class="no-js" lang="zh">`."""
    if locale not in HTML_LANG:
        return output
    tag = HTML_LANG[locale]
    output = re.sub(r'(<html\b[^>]*\blang=")' + re.escape(locale) + '"', lambda m: f'{m[1]}{tag}"', output, count=1)
    return output.replace(f'hreflang="{locale}"', f'hreflang="{tag}"')


def on_post_page(output: str, page, config: MkDocsConfig) -> str:
    for other in HTML_LANG:  # every page links to its counterpart in each language
        output = output.replace(f'hreflang="{other}"', f'hreflang="{HTML_LANG[other]}"')
    locale = getattr(page.file, "locale", None)
    if not locale or locale == default_language(config):
        return output
    output = _html_lang(output, locale)
    # Search this language's index: Material resolves "search/search_index.json"
    # against this base, which needs its trailing slash ("../.." -> "../../zh/").
    return re.sub(r'("base": ")([^"]*)(")', lambda m: f"{m[1]}{m[2]}/{locale}/{m[3]}", output, count=1)


def on_post_template(output: str, template_name: str, config: MkDocsConfig) -> str:
    return _html_lang(output, language(config)) if template_name == "404.html" else output


def split_index(index: dict, languages: list[str]) -> dict[str, dict]:
    """{"": default-language index, "zh": the zh index with 'zh/' stripped, ...}."""
    out = {"": {**index, "docs": []}} | {lang: {**index, "docs": []} for lang in languages}
    for doc in index["docs"]:
        lang = next((lang for lang in languages if doc["location"].startswith(f"{lang}/")), "")
        if lang:
            doc = {**doc, "location": doc["location"].removeprefix(f"{lang}/"), "title": doc["title"].replace(ZWSP, "")}
        out[lang]["docs"].append(doc)
    return out


@event_priority(-200)  # after mkdocs-static-i18n (-100) has written the merged index
def on_post_build(config: MkDocsConfig) -> None:
    if nested_language_build(config):
        return  # the outer build splits the final index
    others = other_languages(config)
    site = Path(config.site_dir)
    merged = site / "search" / "search_index.json"
    if not merged.exists() or not others:
        return
    for lang, index in split_index(json.loads(merged.read_text(encoding="utf-8")), others).items():
        target = site / lang / "search" / "search_index.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
