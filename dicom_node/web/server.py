"""Running the admin app inside the node: uvicorn in a thread of the parent process.

The parent already holds the database, the rule source and the delivery
workers, so the app reads the same objects the node uses (a saved rule is
visible on the next reload, a retry wakes the same queue).  The listening
socket is bound here, before the thread starts, so a taken port is reported
at once and the node keeps running without the admin app rather than dying.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from dicom_node.config import NodeConfig
from dicom_node.db import Database

log = logging.getLogger("dicom_node.web")


class WebServer:
    """The admin app's thread; :meth:`stop` ends it."""

    def __init__(self, holder: dict[str, Any], created: threading.Event, thread: threading.Thread, url: str) -> None:
        self._holder, self._created, self.thread, self.url = holder, created, thread, url

    def stop(self) -> None:
        self._created.wait(30)
        server = self._holder.get("server")
        if server is not None:
            server.should_exit = True
        self.thread.join(timeout=10)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def start_web(config: NodeConfig, db: Database, rules: Any) -> WebServer | None:
    """Start the admin app if ``[web] enabled``; None when disabled, not installed, or the port is taken."""
    web = config.web
    if not web.enabled:
        return None
    try:
        import uvicorn
    except ImportError as exc:
        log.warning("web: admin app not started: %s (install the 'web' extra)", exc)
        return None
    try:
        sock = _bind(web.bind, web.port)
    except OSError as exc:
        log.error("web: cannot listen on %s:%d (%s); the node runs without the admin app", web.bind, web.port, exc.strerror or exc)
        return None
    tls = web.tls_cert is not None and web.tls_key is not None
    url = f"{'https' if tls else 'http'}://{web.bind}:{web.port}/"
    holder: dict[str, Any] = {}
    created = threading.Event()

    def serve() -> None:
        # The app is built here, not in the caller: importing the web stack takes seconds
        # that the node's start-up should not wait for (connections queue on the bound socket).
        try:
            from dicom_node.web.app import create_app

            server = uvicorn.Server(uvicorn.Config(
                create_app(config, db, rules), log_level="warning", access_log=False, lifespan="off", proxy_headers=False,
                ssl_certfile=str(web.tls_cert) if tls else None, ssl_keyfile=str(web.tls_key) if tls else None,
            ))
        except Exception:  # noqa: BLE001 - a broken web stack must not take the node down
            log.exception("web: admin app could not be built")
            sock.close()
            created.set()
            return
        holder["server"] = server
        created.set()
        log.info("web: admin app on %s", url)
        server.run(sockets=[sock])

    thread = threading.Thread(target=serve, name="web", daemon=True)
    thread.start()
    return WebServer(holder, created, thread, url)
