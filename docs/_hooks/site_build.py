"""What the hooks ask of the build: the site's path, and where mkdocs-static-i18n is.

Not a hook itself: the hooks import it (MkDocs puts a hook's own folder on
the path while it loads the hook).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mkdocs.config.defaults import MkDocsConfig


def site_path(config: MkDocsConfig) -> str:
    """'/mha/' for site_url https://USER.github.io/mha/; '/' at a domain root."""
    path = urlsplit(config.site_url or "/").path or "/"
    return path if path.endswith("/") else path + "/"


def i18n(config: MkDocsConfig):
    """The mkdocs-static-i18n plugin, or None."""
    return config.plugins.get("i18n")


def language(config: MkDocsConfig) -> str:
    """The language being built now."""
    return getattr(i18n(config), "current_language", None) or "en"


def default_language(config: MkDocsConfig) -> str:
    return getattr(i18n(config), "default_language", None) or "en"


def other_languages(config: MkDocsConfig) -> list[str]:
    """The built languages besides the default one."""
    default = default_language(config)
    return [lang for lang in getattr(i18n(config), "build_languages", []) if lang != default]


def nested_language_build(config: MkDocsConfig) -> bool:
    """True inside a language build that mkdocs-static-i18n starts from the default one.

    Hooks that finish the whole site run in the outer build only, after the
    plugin has built every language.
    """
    return bool(getattr(i18n(config), "building", False))
