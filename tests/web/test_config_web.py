"""``[web]`` and ``[rules] source`` in node.toml: defaults and errors that name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import ConfigError, parse_config


def test_defaults(tmp_path: Path) -> None:
    config = parse_config({}, tmp_path)
    assert config.rules_source == "folder"
    assert (config.web.enabled, config.web.bind, config.web.port, config.web.session_hours) == (True, "127.0.0.1", 8080, 8.0)
    assert config.web.tls_cert is None and not config.web.secure_cookies


@pytest.mark.parametrize(("data", "message"), [
    ({"rules": {"source": "git"}}, "rules.source: must be 'folder' or 'database', got 'git'"),
    ({"web": {"port": 0}}, "web.port: port must be 1-65535"),
    ({"web": {"bind": "localhost"}}, "web.bind: 'localhost' is not an IP address"),
    ({"web": {"session_hours": 0}}, "web.session_hours: must be > 0"),
    ({"web": {"enabled": "yes"}}, "web.enabled: expected bool"),
    ({"web": {"tls_cert": "missing.pem", "tls_key": "missing.key"}}, "web.tls_cert: file"),
    ({"web": {"portt": 1}}, "web: unknown field(s) ['portt']"),
])
def test_errors_name_the_field(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path)
    assert str(caught.value).startswith(message)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(ConfigError, match="give both"):
        parse_config({"web": {"tls_cert": "cert.pem"}}, tmp_path)
    (tmp_path / "key.pem").write_text("x")
    web = parse_config({"web": {"tls_cert": "cert.pem", "tls_key": "key.pem"}}, tmp_path).web
    assert web.tls_cert == (tmp_path / "cert.pem").resolve() and web.tls_key == (tmp_path / "key.pem").resolve()
