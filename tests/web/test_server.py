"""Starting the app the way the node does: a taken port is survived, TLS works when configured."""
from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from dicom_node.db import Database
from dicom_node.web.server import start_web
from tests.peers import free_port, wait_port
from tests.web.conftest import make_config


def test_taken_port_leaves_the_node_running(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    config = make_config(tmp_path, web={"port": port})
    db = Database(config.database_url)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        with caplog.at_level(logging.ERROR, logger="dicom_node.web"):
            assert start_web(config, db, None) is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
    assert start_web(make_config(tmp_path, web={"enabled": False}), db, None) is None
    db.dispose()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls_when_cert_and_key_are_set(tmp_path: Path) -> None:
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                           "-out", str(tmp_path / "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1"], capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    port = free_port()
    config = make_config(tmp_path, web={"port": port, "tls_cert": "cert.pem", "tls_key": "key.pem"})
    db = Database(config.database_url)
    server = start_web(config, db, None)
    assert server is not None and server.url == f"https://127.0.0.1:{port}/"
    try:
        wait_port(port, 30)
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        context.check_hostname = False  # the test certificate names 127.0.0.1 as CN only
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/login", context=context, timeout=30) as response:
            assert response.status == 200
            cookies = response.headers.get_all("set-cookie")
        assert any(c.startswith("dn_login_csrf=") and "Secure" in c and "HttpOnly" in c for c in cookies)
        with pytest.raises(OSError):  # plain HTTP is not served on the TLS port (urllib: URLError or a reset)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10)
    finally:
        server.stop()
        db.dispose()
    assert not server.thread.is_alive()
