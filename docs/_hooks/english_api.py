"""MkDocs hook: build the API reference once, in English.

The API reference is rendered from the docstrings, which are English. With
mkdocs-static-i18n's fallback, every untranslated page would also be built
under /zh/, and mkdocstrings would then register each object twice
(`Multiple primary URLs found for 'mha.Attention'` under --strict). The
fallback is still wanted for shared assets (images, CSS, the vendored
JavaScript), so this hook drops only the API pages from non-English builds;
the Chinese navigation links to the English reference instead.
"""

from __future__ import annotations

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files

API_DIR = "api/"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    i18n = config.plugins.get("i18n")
    language = getattr(i18n, "current_language", None)
    if language in (None, getattr(i18n, "default_language", None)):
        return files
    for file in [f for f in files if f.src_uri.startswith(API_DIR) and f.is_documentation_page()]:
        files.remove(file)
    return files
