"""MkDocs hook: serve mermaid and KaTeX from the site itself, never from a CDN.

The libraries come from npm (``npm ci`` reads package.json and
package-lock.json, which pin their versions). Before each build this hook
copies the files the pages load into ``docs/assets/vendor/`` (ignored by git),
where mkdocs-mermaid2-plugin looks for its ``javascript:`` path.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "node_modules"
VENDOR = ROOT / "docs" / "assets" / "vendor"

# source under node_modules -> destination under docs/assets/vendor
FILES = {
    "mermaid/dist/mermaid.min.js": "mermaid.min.js",
    "katex/dist/katex.min.js": "katex/katex.min.js",
    "katex/dist/katex.min.css": "katex/katex.min.css",
    "katex/dist/contrib/auto-render.min.js": "katex/auto-render.min.js",
}
FOLDERS = {"katex/dist/fonts": "katex/fonts"}


def _copy(src: Path, dst: Path) -> None:
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return  # unchanged: do not wake `mkdocs serve`'s file watcher
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def vendor() -> None:
    missing = [name for name in (*FILES, *FOLDERS) if not (NODE / name).exists()]
    if missing:
        raise SystemExit(f"docs assets missing from {NODE}: {', '.join(missing)}. Run `npm ci` in {ROOT} first.")
    for src, dst in FILES.items():
        _copy(NODE / src, VENDOR / dst)
    for src, dst in FOLDERS.items():
        for font in sorted((NODE / src).iterdir()):
            if font.suffix == ".woff2":  # every browser that runs the site reads woff2
                _copy(font, VENDOR / dst / font.name)


def on_startup(command: str, dirty: bool) -> None:  # noqa: ARG001 (MkDocs hook signature)
    vendor()
