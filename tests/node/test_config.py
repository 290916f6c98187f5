"""node.toml validation: the shipped file loads, and every mistake names its field."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_config
from tests.peers import REPO


def test_default_config_loads_with_safe_defaults() -> None:
    config = load_config(REPO / "node.toml")
    assert config.bind == "127.0.0.1"
    assert config.database_url.startswith("sqlite:///")
    assert config.destinations["archive"].kind == "folder"
    listener = config.listeners[0]
    assert listener.allows_calling("STORESCU") and not listener.allows_calling("SOMEONE")
    assert listener.allows_host("127.0.0.1") and not listener.allows_host("10.1.2.3")
    assert config.rules_folder == (REPO / "deploy" / "rules").resolve()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[node]\nport = 70000", "node.port"),
        ("[node]\nport = 'x'", "node.port"),
        ("[node]\nae_title = 'WAY_TOO_LONG_AE_TITLE'", "node.ae_title"),
        ("[node]\nbind = 'localhost:1'", "node.bind"),
        ("[node]\nuid_root = '1.2.abc'", "node.uid_root"),
        ("[node]\nportt = 1", "node"),
        ("[completion]\nlate_instances = 'sometimes'", "completion.late_instances"),
        ("[completion]\nseries_quiet_seconds = -1", "completion.series_quiet_seconds"),
        ("[[listener]]\nae_title = 'A'\nallowed_hosts = ['not-an-ip']", "listener[0].allowed_hosts[0]"),
        ("[[listener]]\nallowed_calling_aets = ['X']", "listener[0].ae_title"),
        ("[destinations.pacs]\ntype = 'ftp'", "destinations.pacs.type"),
        ("[destinations.pacs]\ntype = 'dicom'\nae_title = 'P'\nhost = 'h'", "destinations.pacs.port"),
        ("[destinations.pacs]\ntype = 'dicom'\nae_title = 'P'\nhost = 'h'\nport = 104\nmax_pdu = 100", "destinations.pacs.max_pdu"),
        ("[database]\nurl = 'mysql://x'", "database.url"),
        ("[storage]\nmax_used_percent = 120", "storage.max_used_percent"),
        ("[delivery]\nmax_attempts = 0", "delivery.max_attempts"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(field), str(info.value)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[node]\nport = 1\nae_title = \n")
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path)


def test_per_listener_completion_overrides_global(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        "[completion]\nseries_quiet_seconds = 5\n"
        "[[listener]]\nae_title = 'FAST'\nallowed_calling_aets = ['*']\n[listener.completion]\nseries_quiet_seconds = 1\n"
        "[[listener]]\nae_title = 'SLOW'\nallowed_calling_aets = ['*']\n"
    )
    config = load_config(path)
    assert config.completion_for("FAST").series_quiet_seconds == 1
    assert config.completion_for("SLOW").series_quiet_seconds == 5
    assert config.completion_for("FAST").series_max_wait_seconds == 600


def test_cli_reports_config_errors_with_exit_code_2(tmp_path: Path) -> None:
    from dicom_node.cli.main import main

    path = tmp_path / "node.toml"
    path.write_text("[node]\nport = 0\n")
    assert main(["--config", str(path), "status"]) == 2
