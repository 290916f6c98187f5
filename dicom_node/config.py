"""``node.toml``: loading and validation.

Every field is checked at start; an invalid file raises :class:`ConfigError`
whose message names the field (``listener[0].allowed_hosts: ...``) so an
administrator can fix it without reading code.  Relative paths are resolved
against the folder that holds the config file.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_UID_ROOT = "2.25"
LATE_POLICIES = ("ignore", "rerun", "replace")
_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class ConfigError(ValueError):
    """The configuration is invalid; the message starts with the offending field."""


@dataclass(frozen=True)
class CompletionSettings:
    series_quiet_seconds: float = 5.0
    series_max_wait_seconds: float = 600.0
    study_quiet_seconds: float = 10.0
    study_max_wait_seconds: float = 1800.0
    late_instances: Literal["ignore", "rerun", "replace"] = "rerun"


@dataclass(frozen=True)
class Listener:
    ae_title: str
    allowed_calling_aets: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    sop_classes: tuple[str, ...] = ()
    completion: CompletionSettings | None = None

    def allows_calling(self, aet: str) -> bool:
        return "*" in self.allowed_calling_aets or aet in self.allowed_calling_aets

    def allows_host(self, host: str) -> bool:
        if "*" in self.allowed_hosts:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.allowed_hosts
        for allowed in self.allowed_hosts:
            try:
                if address in ipaddress.ip_network(allowed, strict=False):
                    return True
            except ValueError:
                if host == allowed:
                    return True
        return False


@dataclass(frozen=True)
class DicomDestination:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str | None = None
    max_pdu: int = 0
    timeout_seconds: float = 30.0
    kind: Literal["dicom"] = "dicom"


@dataclass(frozen=True)
class FolderDestination:
    name: str
    path: Path
    kind: Literal["folder"] = "folder"


Destination = DicomDestination | FolderDestination


@dataclass(frozen=True)
class DeliverySettings:
    retry_initial_seconds: float = 30.0
    retry_max_seconds: float = 600.0
    max_attempts: int = 10
    workers: int = 2
    poll_seconds: float = 0.2


@dataclass(frozen=True)
class JobSettings:
    """Model runs: worker processes, per-job timeout, result confidence."""

    workers: int = 1
    timeout_seconds: float = 900.0
    poll_seconds: float = 0.5
    max_attempts: int = 2


@dataclass(frozen=True)
class StorageSettings:
    spool: Path
    results: Path
    fsync: bool = True
    max_used_percent: float = 90.0
    min_free_mb: float = 2048.0


@dataclass(frozen=True)
class WebSettings:
    """The admin web app (``[web]``, see docs/admin.md): loopback by default; TLS when both files are set."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 8080
    session_hours: float = 8.0
    secure_cookies: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    path: Path | None
    ae_title: str
    bind: str
    port: int
    max_pdu: int
    uid_root: str
    storage: StorageSettings
    database_url: str
    completion: CompletionSettings
    listeners: tuple[Listener, ...]
    destinations: dict[str, Destination]
    rules_folder: Path
    delivery: DeliverySettings
    weights_dir: Path
    jobs: JobSettings
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)
    rules_source: Literal["folder", "database"] = "folder"  # web admin hook: where the node reads rules
    web: WebSettings = field(default_factory=WebSettings)  # web admin hook

    def listener(self, called_aet: str) -> Listener | None:
        for listener in self.listeners:
            if listener.ae_title == called_aet:
                return listener
        return None

    def completion_for(self, called_aet: str | None) -> CompletionSettings:
        listener = self.listener(called_aet) if called_aet else None
        return listener.completion if listener and listener.completion else self.completion


# --- validation helpers --------------------------------------------------------------------------


def _take(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}.{key}: required field is missing")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def _ae_title(value: str, where: str) -> str:
    if not _AE_RE.match(value) or value.strip() != value or "\\" in value:
        raise ConfigError(f"{where}: {value!r} is not a valid AE title (1-16 printable characters, no backslash, no leading/trailing spaces)")
    return value


def _positive(value: float, where: str) -> float:
    if value <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value}")
    return value


def _max_pdu(value: int, where: str) -> int:
    if value < 0 or 0 < value < 4096:
        raise ConfigError(f"{where}: 0 (unlimited) or >= 4096, got {value}")
    return value


def _port(value: int, where: str) -> int:
    if not 0 < value < 65536:
        raise ConfigError(f"{where}: port must be 1-65535, got {value}")
    return value


def _no_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def _completion(table: dict[str, Any], where: str, base: CompletionSettings) -> CompletionSettings:
    _no_unknown(table, set(CompletionSettings.__dataclass_fields__), where)
    values = {}
    for name in ("series_quiet_seconds", "series_max_wait_seconds", "study_quiet_seconds", "study_max_wait_seconds"):
        values[name] = _positive(_take(table, name, float, where, getattr(base, name)), f"{where}.{name}")
    late = _take(table, "late_instances", str, where, base.late_instances)
    if late not in LATE_POLICIES:
        raise ConfigError(f"{where}.late_instances: must be one of {list(LATE_POLICIES)}, got {late!r}")
    if values["series_max_wait_seconds"] < values["series_quiet_seconds"]:
        raise ConfigError(f"{where}.series_max_wait_seconds: must be >= series_quiet_seconds")
    if values["study_max_wait_seconds"] < values["study_quiet_seconds"]:
        raise ConfigError(f"{where}.study_max_wait_seconds: must be >= study_quiet_seconds")
    return CompletionSettings(late_instances=late, **values)


def _str_list(table: dict[str, Any], key: str, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = _take(table, key, list, where, list(default))
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{where}.{key}[{i}]: expected a string, got {item!r}")
    return tuple(value)


def _destination(name: str, table: dict[str, Any], base: Path) -> Destination:
    where = f"destinations.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    kind = _take(table, "type", str, where)
    if kind == "folder":
        _no_unknown(table, {"type", "path"}, where)
        return FolderDestination(name=name, path=(base / _take(table, "path", str, where)).resolve())
    if kind == "dicom":
        _no_unknown(table, {"type", "ae_title", "host", "port", "calling_ae_title", "max_pdu", "timeout_seconds"}, where)
        calling = table.get("calling_ae_title")
        return DicomDestination(
            name=name,
            ae_title=_ae_title(_take(table, "ae_title", str, where), f"{where}.ae_title"),
            host=_take(table, "host", str, where),
            port=_port(_take(table, "port", int, where), f"{where}.port"),
            calling_ae_title=_ae_title(calling, f"{where}.calling_ae_title") if calling is not None else None,
            max_pdu=_max_pdu(_take(table, "max_pdu", int, where, 0), f"{where}.max_pdu"),
            timeout_seconds=_positive(_take(table, "timeout_seconds", float, where, 30.0), f"{where}.timeout_seconds"),
        )
    raise ConfigError(f"{where}.type: must be 'dicom' or 'folder', got {kind!r}")


def _web(table: dict[str, Any], base: Path) -> WebSettings:
    """``[web]``: the admin app (web admin hook)."""
    _no_unknown(table, set(WebSettings.__dataclass_fields__), "web")
    bind = _take(table, "bind", str, "web", "127.0.0.1")
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise ConfigError(f"web.bind: {bind!r} is not an IP address") from None
    tls = {}
    for key in ("tls_cert", "tls_key"):
        value = _take(table, key, str, "web", None)
        if value is not None:
            tls[key] = (base / value).resolve()
            if not tls[key].is_file():
                raise ConfigError(f"web.{key}: file {tls[key]} does not exist")
    if len(tls) == 1:
        raise ConfigError("web.tls_cert / web.tls_key: give both (certificate and private key) or neither")
    return WebSettings(
        enabled=_take(table, "enabled", bool, "web", True),
        bind=bind,
        port=_port(_take(table, "port", int, "web", 8080), "web.port"),
        session_hours=_positive(_take(table, "session_hours", float, "web", 8.0), "web.session_hours"),
        secure_cookies=_take(table, "secure_cookies", bool, "web", False),
        tls_cert=tls.get("tls_cert"),
        tls_key=tls.get("tls_key"),
    )


def parse_config(data: dict[str, Any], base: Path, path: Path | None = None) -> NodeConfig:
    """Validate a parsed TOML document; ``base`` resolves relative paths."""
    _no_unknown(data, {"node", "storage", "database", "completion", "listener", "destinations", "rules", "delivery", "models", "logging", "jobs", "web"}, "node.toml")
    node = _take(data, "node", dict, "node.toml", {})
    _no_unknown(node, {"ae_title", "bind", "port", "max_pdu", "uid_root"}, "node")
    ae_title = _ae_title(_take(node, "ae_title", str, "node", "DICOM_NODE"), "node.ae_title")
    bind = _take(node, "bind", str, "node", "127.0.0.1")
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise ConfigError(f"node.bind: {bind!r} is not an IP address") from None
    port = _port(_take(node, "port", int, "node", 11112), "node.port")
    max_pdu = _max_pdu(_take(node, "max_pdu", int, "node", 0), "node.max_pdu")
    uid_root = _take(node, "uid_root", str, "node", DEFAULT_UID_ROOT).rstrip(".")
    if not _UID_ROOT_RE.match(uid_root) or len(uid_root) > 24:
        raise ConfigError(f"node.uid_root: {uid_root!r} is not a valid UID root (digits and dots, at most 24 characters)")

    storage_t = _take(data, "storage", dict, "node.toml", {})
    _no_unknown(storage_t, {"spool", "results", "fsync", "max_used_percent", "min_free_mb"}, "storage")
    max_used = _take(storage_t, "max_used_percent", float, "storage", 90.0)
    if not 0 < max_used <= 100:
        raise ConfigError(f"storage.max_used_percent: must be in (0, 100], got {max_used}")
    storage = StorageSettings(
        spool=(base / _take(storage_t, "spool", str, "storage", "var/spool")).resolve(),
        results=(base / _take(storage_t, "results", str, "storage", "var/results")).resolve(),
        fsync=_take(storage_t, "fsync", bool, "storage", True),
        max_used_percent=max_used,
        min_free_mb=_take(storage_t, "min_free_mb", float, "storage", 2048.0),
    )

    db = _take(data, "database", dict, "node.toml", {})
    _no_unknown(db, {"url"}, "database")
    url = _take(db, "url", str, "database", "sqlite:///var/node.db")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = "sqlite:///" + str((base / url[len("sqlite:///"):]).resolve())
    elif not url.startswith(("sqlite:", "postgresql")):
        raise ConfigError(f"database.url: only sqlite:/// and postgresql:// URLs are supported, got {url.split(':')[0]}:")

    completion = _completion(_take(data, "completion", dict, "node.toml", {}), "completion", CompletionSettings())

    listeners_t = _take(data, "listener", list, "node.toml", [])
    listeners = []
    for i, table in enumerate(listeners_t):
        where = f"listener[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        _no_unknown(table, {"ae_title", "allowed_calling_aets", "allowed_hosts", "sop_classes", "completion"}, where)
        hosts = _str_list(table, "allowed_hosts", where, ("127.0.0.1", "::1"))
        for j, host in enumerate(hosts):
            if host != "*":
                try:
                    ipaddress.ip_network(host, strict=False)
                except ValueError:
                    raise ConfigError(f"{where}.allowed_hosts[{j}]: {host!r} is not an IP address or network") from None
        aets = _str_list(table, "allowed_calling_aets", where, ())
        for j, aet in enumerate(aets):
            if aet != "*":
                _ae_title(aet, f"{where}.allowed_calling_aets[{j}]")
        own = table.get("completion")
        listeners.append(
            Listener(
                ae_title=_ae_title(_take(table, "ae_title", str, where), f"{where}.ae_title"),
                allowed_calling_aets=aets,
                allowed_hosts=hosts,
                sop_classes=_str_list(table, "sop_classes", where, ()),
                completion=_completion(own, f"{where}.completion", completion) if own is not None else None,
            )
        )
    if not listeners:
        listeners.append(Listener(ae_title, ("DICOM_NODE_SCU", "STORESCU"), ("127.0.0.1", "::1")))
    titles = [l.ae_title for l in listeners]
    if len(set(titles)) != len(titles):
        raise ConfigError(f"listener: AE titles must be unique, got {titles}")

    dest_t = _take(data, "destinations", dict, "node.toml", {})
    destinations = {name: _destination(name, table, base) for name, table in dest_t.items()}

    rules = _take(data, "rules", dict, "node.toml", {})
    _no_unknown(rules, {"folder", "source"}, "rules")
    rules_folder = (base / _take(rules, "folder", str, "rules", "deploy/rules")).resolve()
    rules_source = _take(rules, "source", str, "rules", "folder")  # web admin hook
    if rules_source not in ("folder", "database"):
        raise ConfigError(f"rules.source: must be 'folder' or 'database', got {rules_source!r}")
    web = _web(_take(data, "web", dict, "node.toml", {}), base)  # web admin hook

    delivery_t = _take(data, "delivery", dict, "node.toml", {})
    _no_unknown(delivery_t, set(DeliverySettings.__dataclass_fields__), "delivery")
    delivery = DeliverySettings(
        retry_initial_seconds=_positive(_take(delivery_t, "retry_initial_seconds", float, "delivery", 30.0), "delivery.retry_initial_seconds"),
        retry_max_seconds=_positive(_take(delivery_t, "retry_max_seconds", float, "delivery", 600.0), "delivery.retry_max_seconds"),
        max_attempts=int(_positive(_take(delivery_t, "max_attempts", int, "delivery", 10), "delivery.max_attempts")),
        workers=int(_positive(_take(delivery_t, "workers", int, "delivery", 2), "delivery.workers")),
        poll_seconds=_positive(_take(delivery_t, "poll_seconds", float, "delivery", 0.2), "delivery.poll_seconds"),
    )

    jobs_t = _take(data, "jobs", dict, "node.toml", {})
    _no_unknown(jobs_t, set(JobSettings.__dataclass_fields__), "jobs")
    jobs = JobSettings(
        workers=int(_positive(_take(jobs_t, "workers", int, "jobs", 1), "jobs.workers")),
        timeout_seconds=_positive(_take(jobs_t, "timeout_seconds", float, "jobs", 900.0), "jobs.timeout_seconds"),
        poll_seconds=_positive(_take(jobs_t, "poll_seconds", float, "jobs", 0.5), "jobs.poll_seconds"),
        max_attempts=int(_positive(_take(jobs_t, "max_attempts", int, "jobs", 2), "jobs.max_attempts")),
    )

    models = _take(data, "models", dict, "node.toml", {})
    _no_unknown(models, {"weights_dir"}, "models")
    weights_dir = (base / _take(models, "weights_dir", str, "models", "var/weights")).resolve()

    logging_t = _take(data, "logging", dict, "node.toml", {})
    _no_unknown(logging_t, {"level"}, "logging")
    level = _take(logging_t, "level", str, "logging", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"logging.level: one of DEBUG, INFO, WARNING, ERROR; got {level!r}")

    return NodeConfig(
        path=path, ae_title=ae_title, bind=bind, port=port, max_pdu=max_pdu, uid_root=uid_root,
        storage=storage, database_url=url, completion=completion, listeners=tuple(listeners),
        destinations=destinations, rules_folder=rules_folder, delivery=delivery, weights_dir=weights_dir, jobs=jobs,
        log_level=level, rules_source=rules_source, web=web,
    )


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate ``path``; syntax errors name the line, semantic ones the field."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from exc
    return parse_config(data, path.parent, path)
