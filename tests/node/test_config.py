"""node.toml validation: the shipped file loads and documents every field, and every mistake names its field."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from dicom_node.config import ConfigError, DicomDestination, NodeConfig, load_config, parse_config
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


def test_shipped_node_toml_documents_every_field() -> None:
    """Each table's every field appears in node.toml (set or commented out), so the file is the reference."""
    text = (REPO / "node.toml").read_text()
    missing = []
    for section, info in NodeConfig.model_fields.items():
        model = info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue  # [[listener]] and [destinations.*] are examples, documented by their comments
        body = re.search(rf"^\[{section}\][^\n]*\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        assert body is not None, f"[{section}] is not in node.toml"
        missing += [f"{section}.{name}" for name in model.model_fields if not re.search(rf"^#? ?{name} = ", body.group(1), re.M)]
    assert missing == []


def test_receiver_sweep_and_batch_tunables_default_and_override(tmp_path: Path) -> None:
    defaults = parse_config({}, tmp_path)
    assert (defaults.node.max_associations, defaults.node.network_timeout_seconds, defaults.node.dimse_timeout_seconds) == (64, 120.0, 120.0)
    assert defaults.completion.sweep_seconds == 0.25 and defaults.delivery.batch_size == 32
    config = parse_config({
        "node": {"max_associations": 4, "network_timeout_seconds": 30, "dimse_timeout_seconds": 45.5},
        "completion": {"sweep_seconds": 1},
        "delivery": {"batch_size": 8},
    }, tmp_path)
    assert (config.node.max_associations, config.node.network_timeout_seconds, config.node.dimse_timeout_seconds) == (4, 30.0, 45.5)
    assert config.completion.sweep_seconds == 1.0 and config.delivery.batch_size == 8


def test_receiver_takes_its_limits_from_the_config(tmp_path: Path) -> None:
    from dicom_node.db import Database
    from dicom_node.receive.scp import Receiver
    from dicom_node.receive.spool import Spool

    config = parse_config({"node": {"max_associations": 3, "network_timeout_seconds": 7, "dimse_timeout_seconds": 9.5},
                           "database": {"url": "sqlite:///node.db"}, "storage": {"spool": "spool"}}, tmp_path)
    db = Database(config.database_url, migrate=False)
    try:
        ae = Receiver(config, db, Spool(config.storage.spool)).ae
        assert (ae.maximum_associations, ae.network_timeout, ae.dimse_timeout) == (3, 7.0, 9.5)
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[node]\nport = 70000", "node.port"),
        ("[node]\nport = 'x'", "node.port"),
        ("[node]\nae_title = 'WAY_TOO_LONG_AE_TITLE'", "node.ae_title"),
        ("[node]\nbind = 'localhost:1'", "node.bind"),
        ("[node]\nuid_root = '1.2.abc'", "node.uid_root"),
        ("[node]\nportt = 1", "node"),
        ("[node]\nmax_associations = 0", "node.max_associations"),
        ("[node]\nmax_associations = 2.5", "node.max_associations"),
        ("[node]\nnetwork_timeout_seconds = -1", "node.network_timeout_seconds"),
        ("[node]\ndimse_timeout_seconds = 'long'", "node.dimse_timeout_seconds"),
        ("[completion]\nlate_instances = 'sometimes'", "completion.late_instances"),
        ("[completion]\nseries_quiet_seconds = -1", "completion.series_quiet_seconds"),
        ("[completion]\nseries_quiet_seconds = 700", "completion.series_max_wait_seconds"),
        ("[completion]\nsweep_seconds = 0", "completion.sweep_seconds"),
        ("[[listener]]\nae_title = 'A'\nallowed_hosts = ['not-an-ip']", "listener[0].allowed_hosts[0]"),
        ("[[listener]]\nallowed_calling_aets = ['X']", "listener[0].ae_title"),
        ("[[listener]]\nae_title = 'A'\n[[listener]]\nae_title = 'B'\nallowed_host = ['*']", "listener[1]"),
        ("[[listener]]\nae_title = 'A'\n[listener.completion]\nsweep_seconds = 1", "listener[0].completion"),
        ("[destinations.pacs]\ntype = 'ftp'", "destinations.pacs.type"),
        ("[destinations.pacs]\npath = 'x'", "destinations.pacs.type"),
        ("[destinations.pacs]\ntype = 'dicom'\nae_title = 'P'\nhost = 'h'", "destinations.pacs.port"),
        ("[destinations.pacs]\ntype = 'dicom'\nae_title = 'P'\nhost = 'h'\nport = 104\nmax_pdu = 100", "destinations.pacs.max_pdu"),
        ("[destinations.pacs]\ntype = 'dicom'\nae_title = 'P'\nhost = 'h'\nport = 104\nname = 'other'", "destinations.pacs"),
        ("[destinations.pacs]\ntype = 'folder'\npath = 3", "destinations.pacs.path"),
        ("[database]\nurl = 'mysql://x'", "database.url"),
        ("[storage]\nmax_used_percent = 120", "storage.max_used_percent"),
        ("[delivery]\nmax_attempts = 0", "delivery.max_attempts"),
        ("[delivery]\nbatch_size = 0", "delivery.batch_size"),
        ("[logging]\nlevel = 'chatty'", "logging.level"),
        ("[rules]\nfolder = ['a']", "rules.folder"),
        ("[web]\nenabled = 'yes'", "web.enabled"),
        ("[jobs]\nworkers = true", "jobs.workers"),
        ("[modles]\nweights_dir = 'w'", "node.toml"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{field}: "), str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"listener": [{"ae_title": "A", "allowed_hosts": ["127.0.0.1", "host.example"]}]},
         "listener[0].allowed_hosts[1]: 'host.example' is not an IP address or network"),
        ({"listener": [{"ae_title": "A", "allowed_calling_aets": ["*", "BAD\\AE"]}]},
         "listener[0].allowed_calling_aets[1]: 'BAD\\\\AE' is not a valid AE title"),
        ({"node": {"port": "11112"}}, "node.port: expected int, got str '11112'"),
        ({"node": {"max_associations": 0}}, "node.max_associations: must be > 0, got 0"),
        ({"delivery": {"batch_size": 1.5}}, "delivery.batch_size: expected int, got float 1.5"),
        ({"node": {"portt": 1}}, "node: unknown field(s) ['portt']; known: ['ae_title', 'artim_seconds', 'bind', 'dimse_timeout_seconds', "),
        ({"destinations": {"pacs": {"type": "ftp"}}}, "destinations.pacs.type: must be 'dicom' or 'folder', got 'ftp'"),
        ({"destinations": {"pacs": "archive"}}, "destinations.pacs: expected table, got str 'archive'"),
        ({"completion": {"late_instances": "never"}}, "completion.late_instances: must be 'ignore', 'rerun' or 'replace', got 'never'"),
        ({"listener": [{"ae_title": "A"}, {"ae_title": "A"}]}, "listener: AE titles must be unique, got ['A', 'A']"),
    ],
)
def test_error_messages_read_as_today(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    assert str(info.value).startswith(message), str(info.value)


def test_every_mistake_gets_its_own_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"node": {"port": 0, "bind": "anywhere"}, "delivery": {"workers": 0}}, tmp_path)
    assert [line.split(":")[0] for line in str(info.value).splitlines()] == ["node.bind", "node.port", "delivery.workers"]


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[node]\nport = 1\nae_title = \n")
    with pytest.raises(ConfigError, match="line 3"):
        load_config(path)


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "node.toml").write_text(
        "[storage]\nspool = 'spool'\n[database]\nurl = 'sqlite:///db/node.db'\n"
        "[destinations.archive]\ntype = 'folder'\npath = '../archive'\n"
    )
    config = load_config(folder / "node.toml")
    assert config.storage.spool == folder / "spool"
    assert config.storage.results == folder / "var" / "results"  # defaults too
    assert config.database_url == f"sqlite:///{folder / 'db' / 'node.db'}"
    assert config.destinations["archive"].path == tmp_path / "archive"
    assert config.destinations["archive"].name == "archive"


def test_no_listener_means_one_on_the_node_ae_title(tmp_path: Path) -> None:
    config = parse_config({"node": {"ae_title": "ROUTER"}}, tmp_path)
    assert [(each.ae_title, each.allowed_calling_aets, each.allowed_hosts) for each in config.listeners] == [
        ("ROUTER", ("DICOM_NODE_SCU", "STORESCU"), ("127.0.0.1", "::1"))
    ]


def test_per_listener_completion_overrides_global(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        "[completion]\nseries_quiet_seconds = 5\nseries_max_wait_seconds = 300\n"
        "[[listener]]\nae_title = 'FAST'\nallowed_calling_aets = ['*']\n[listener.completion]\nseries_quiet_seconds = 1\n"
        "[[listener]]\nae_title = 'SLOW'\nallowed_calling_aets = ['*']\n"
    )
    config = load_config(path)
    assert config.completion_for("FAST").series_quiet_seconds == 1
    assert config.completion_for("SLOW").series_quiet_seconds == 5
    assert config.completion_for("FAST").series_max_wait_seconds == 300  # from [completion], not the built-in 600


def test_config_is_immutable_and_destinations_built_in_code_are_validated(tmp_path: Path) -> None:
    config = parse_config({}, tmp_path)
    with pytest.raises(ValidationError):
        config.node.port = 1  # type: ignore[misc]
    peer = DicomDestination(name="peer", ae_title="PACS", host="10.0.0.5", port=104)
    assert (peer.kind, peer.max_pdu, peer.timeout_seconds) == ("dicom", 0, 30.0)
    with pytest.raises(ValidationError, match="port must be 1-65535"):
        DicomDestination(name="peer", ae_title="PACS", host="10.0.0.5", port=0)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path: Path) -> None:
    from dicom_node.cli.main import main

    path = tmp_path / "node.toml"
    path.write_text("[node]\nport = 0\n")
    assert main(["--config", str(path), "status"]) == 2


def test_cli_names_the_mistake_in_a_peer_given_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_node.cli.main import main

    path = tmp_path / "node.toml"
    path.write_text("[web]\nenabled = false\n")
    assert main(["--config", str(path), "echo", "PACS@127.0.0.1:99999"]) == 2
    assert "destination 'PACS@127.0.0.1:99999': port: port must be 1-65535, got 99999" in capsys.readouterr().err
