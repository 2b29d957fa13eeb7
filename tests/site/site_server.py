"""Serve a built site under a path prefix, the way a static host does.

`/mha/` as GitHub Pages serves a project site, or `/` as a domain root. A
missing file gets the site's `404.html` with status 404, whatever its path,
as GitHub Pages does.
"""

from __future__ import annotations

import http.server
import sys
import threading
from pathlib import Path


class SiteServer:
    """A static server for `site` at http://127.0.0.1:PORT{prefix}; use as a context manager."""

    def __init__(self, site: Path, prefix: str = "/") -> None:
        if not (prefix.startswith("/") and prefix.endswith("/")):
            raise ValueError(f"prefix must start and end with '/', got {prefix!r}")
        self.site, self.prefix = site, prefix
        handler = _handler(site, prefix)
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{prefix}"

    def __enter__(self) -> SiteServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the browser left mid-file (a tab closed or navigated): not the site's error
        super().handle_error(request, client_address)


def _handler(site: Path, prefix: str) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(site), **kwargs)

        def translate_path(self, path: str) -> str:
            path = path.split("?", 1)[0].split("#", 1)[0]
            if not path.startswith(prefix):
                return str(site / "__outside_the_site__")
            return super().translate_path("/" + path[len(prefix) :])

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            page = site / "404.html"
            if code != 404 or not page.exists():
                super().send_error(code, message, explain)
                return
            body = page.read_bytes()
            self.send_response(404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler
