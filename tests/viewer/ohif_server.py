"""Serve OHIF's prebuilt ``dist/`` on 127.0.0.1, the way its own hosting rules do (standard library only).

    python tests/viewer/ohif_server.py DIST APP_CONFIG.js [PORT]

* ``/app-config.js`` is answered with APP_CONFIG.js (the packaged one points at
  a public demo server, which must never be contacted);
* a path naming a file in DIST gets that file; any other path gets
  ``index.html`` (OHIF is a single-page app: ``/localbasic``, ``/viewer/...``);
* every answer carries the cross-origin isolation headers, so the page gets
  SharedArrayBuffer for its decoders, and ``.wasm`` is served as application/wasm.

The server binds to 127.0.0.1 only.  With PORT 0 (the default) it picks a free
port; either way its first line on stdout is the port, so a test can start it
and read where it listens.
"""
from __future__ import annotations

import mimetypes
import sys
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
         ".css": "text/css", ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".map": "application/json"}


class OhifHandler(BaseHTTPRequestHandler):
    """GET/HEAD for a static single-page app with one overridden file."""

    def __init__(self, *args, dist: Path, config: Path, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.dist = dist
        self.config = config
        super().__init__(*args, **kwargs)

    def _target(self) -> Path:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/app-config.js":
            return self.config
        candidate = (self.dist / path.lstrip("/")).resolve()
        if candidate.is_file() and candidate.is_relative_to(self.dist):
            return candidate
        return self.dist / "index.html"  # SPA fallback, also for anything outside dist

    def _send(self, with_body: bool) -> None:
        target = self._target()
        body = target.read_bytes()
        content_type = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._send(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(with_body=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def serve(dist: Path, config: Path, port: int = 0) -> None:
    handler = partial(OhifHandler, dist=dist.resolve(), config=config.resolve())
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    serve(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 0)
