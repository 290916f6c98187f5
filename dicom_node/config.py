"""``node.toml``: its schema (pydantic models) and loading.

The models mirror the file table by table, so a validation error's location
is the field's place in the file.  An invalid file raises :class:`ConfigError`
with one line per mistake, each starting with the field
(``listener[0].allowed_hosts[1]: ...``), so an administrator can fix it
without reading code.  Types are strict (TOML has them: ``port = "8080"`` is a
mistake, not a port), unknown keys are rejected by name, and relative paths
are resolved against the folder that holds the config file.  Built-in numbers
that are not configurable are named in :mod:`dicom_node.defaults`.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_UID_ROOT = "2.25"
LatePolicy = Literal["ignore", "rerun", "replace"]
LATE_POLICIES: tuple[str, ...] = get_args(LatePolicy)
_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# The key under which a destination's table name reaches its model; no TOML key looks like it.
_TABLE_NAME = "(table name)"
_T = TypeVar("_T")


class ConfigError(ValueError):
    """The configuration is invalid; each line of the message starts with the offending field."""

    @classmethod
    def from_validation(cls, exc: ValidationError, subject: str | None = None) -> ConfigError:
        """One line per mistake; ``subject`` names what was built in code (a CLI peer), the file needs none."""
        lines = [_line(error) for error in exc.errors(include_url=False)]
        return cls("\n".join(f"{subject}: {line}" if subject else line for line in lines))


# --- field types -----------------------------------------------------------------------------------


def _is_ae_title(value: str) -> bool:
    return bool(_AE_RE.match(value)) and value.strip() == value and "\\" not in value


def _ae_title(value: str) -> str:
    if not _is_ae_title(value):
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash, no leading/trailing spaces)")
    return value


def _calling_ae_title(value: str) -> str:
    return value if value == "*" else _ae_title(value)


def _ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


def _host_or_network(value: str) -> str:
    if value != "*":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return value


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError(f"port must be 1-65535, got {value}")
    return value


def _max_pdu(value: int) -> int:
    if value < 0 or 0 < value < 4096:
        raise ValueError(f"0 (unlimited) or >= 4096, got {value}")
    return value


def _uid_root(value: str) -> str:
    if not _UID_ROOT_RE.match(value) or len(value) > 24:
        raise ValueError(f"{value!r} is not a valid UID root (digits and dots, at most 24 characters)")
    return value


def _relative_to_config(value: Any, info: ValidationInfo) -> Any:
    """A path as written in the file, resolved against the file's folder (the cwd when built in code)."""
    if not isinstance(value, (str, Path)):
        raise ValueError(f"expected str, got {type(value).__name__} {value!r}")
    base = (info.context or {}).get("base", Path.cwd())
    return (Path(base) / value).resolve()


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"file {path} does not exist")
    return path


AETitle = Annotated[str, AfterValidator(_ae_title)]
CallingAETitle = Annotated[str, AfterValidator(_calling_ae_title)]  # an AE title or "*" (anyone)
IPAddress = Annotated[str, AfterValidator(_ip_address)]
HostOrNetwork = Annotated[str, AfterValidator(_host_or_network)]  # "10.0.0.0/8", "127.0.0.1" or "*"
Port = Annotated[int, AfterValidator(_port)]
MaxPdu = Annotated[int, AfterValidator(_max_pdu)]
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
ConfigPath = Annotated[Path, BeforeValidator(_relative_to_config)]
ExistingFile = Annotated[ConfigPath, AfterValidator(_existing_file)]
# A TOML array: a list in the parsed document, kept as a tuple (the models are immutable).
Array = Annotated[tuple[_T, ...], Field(strict=False)]


def _defaults_validated() -> Any:
    """A table's default: its model built from ``{}`` with the file's context, so default paths resolve too."""
    return Field(default_factory=dict, validate_default=True)


class _Table(BaseModel):
    """One TOML table: strict types, no unknown keys, immutable once loaded."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any, info: ValidationInfo) -> Any:
        """Name every unknown key of the file and the known ones: a typo must not silently fall back to a default.

        Only the file is validated with a context; a model built in code by field names
        (``DicomDestination(name=...)``) is left to ``extra="forbid"``.
        """
        if isinstance(data, dict) and info.context is not None:
            keys = {info.validation_alias if isinstance(info.validation_alias, str) else info.alias or name
                    for name, info in cls.model_fields.items()}
            unknown = sorted(set(data) - keys)
            if unknown:
                raise ValueError(f"unknown field(s) {unknown}; known: {sorted(keys - {_TABLE_NAME})}")
        return data


# --- the tables ------------------------------------------------------------------------------------


class NodeSettings(_Table):
    """``[node]``: the receiver's identity, address and association limits."""

    ae_title: AETitle = "DICOM_NODE"
    bind: IPAddress = "127.0.0.1"
    port: Port = 11112
    max_pdu: MaxPdu = 0
    uid_root: Annotated[str, BeforeValidator(lambda v: v.rstrip(".") if isinstance(v, str) else v), AfterValidator(_uid_root)] = DEFAULT_UID_ROOT
    max_associations: PositiveInt = 64
    network_timeout_seconds: Positive = 120.0
    dimse_timeout_seconds: Positive = 120.0
    artim_seconds: Positive = 30.0
    max_pending_connections: PositiveInt = 256
    max_pending_per_host: PositiveInt = 32
    max_inflated_mb: PositiveInt = 256
    max_deflate_ratio: Positive = 100.0


class CompletionSettings(_Table):
    """When a series / study counts as complete: ``[completion]``, or ``[listener.completion]`` on top of it."""

    series_quiet_seconds: Positive = 5.0
    series_max_wait_seconds: Positive = Field(600.0, validate_default=True)  # checked against a quiet period set alone
    study_quiet_seconds: Positive = 10.0
    study_max_wait_seconds: Positive = Field(1800.0, validate_default=True)
    late_instances: LatePolicy = "rerun"

    @field_validator("series_max_wait_seconds", "study_max_wait_seconds")
    @classmethod
    def _not_shorter_than_quiet(cls, value: float, info: ValidationInfo) -> float:
        quiet_name = info.field_name.replace("max_wait", "quiet")  # type: ignore[union-attr]
        quiet = info.data.get(quiet_name)  # absent when it was invalid itself
        if quiet is not None and value < quiet:
            raise ValueError(f"must be >= {quiet_name} ({quiet}), got {value}")
        return value


class CompletionSection(CompletionSettings):
    """``[completion]``: the node-wide settings, plus how often the node looks for what has completed."""

    sweep_seconds: Positive = 0.25


class Listener(_Table):
    """``[[listener]]``: one AE title we answer to, who may call it, what it accepts."""

    ae_title: AETitle
    allowed_calling_aets: Array[CallingAETitle] = ()
    allowed_hosts: Array[HostOrNetwork] = ("127.0.0.1", "::1")
    sop_classes: Array[str] = ()
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
        return any(address in ipaddress.ip_network(allowed, strict=False) for allowed in self.allowed_hosts)


class DicomDestination(_Table):
    """``[destinations.<name>]`` with ``type = "dicom"``: C-STORE to a PACS or viewer."""

    name: str = Field(validation_alias=_TABLE_NAME)
    ae_title: AETitle
    host: str
    port: Port
    calling_ae_title: AETitle | None = None
    max_pdu: MaxPdu = 0
    timeout_seconds: Positive = 30.0
    kind: Literal["dicom"] = Field(default="dicom", alias="type")


class FolderDestination(_Table):
    """``[destinations.<name>]`` with ``type = "folder"``: files written under a folder."""

    name: str = Field(validation_alias=_TABLE_NAME)
    path: ConfigPath
    kind: Literal["folder"] = Field(default="folder", alias="type")


Destination = DicomDestination | FolderDestination


def _destination_type(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("type")
    return getattr(value, "kind", None)


_TaggedDestination = Annotated[
    Annotated[DicomDestination, Tag("dicom")] | Annotated[FolderDestination, Tag("folder")],
    Discriminator(_destination_type),
]


class StorageSettings(_Table):
    """``[storage]``: where objects and results are kept, and when the disk counts as full."""

    spool: ConfigPath = Field(Path("var/spool"), validate_default=True)
    results: ConfigPath = Field(Path("var/results"), validate_default=True)
    fsync: bool = True
    max_used_percent: Annotated[float, Field(gt=0, le=100)] = 90.0
    min_free_mb: Annotated[float, Field(ge=0)] = 2048.0


class DatabaseSettings(_Table):
    """``[database]``: SQLite (a relative file is relative to the config) or PostgreSQL."""

    url: str = Field("sqlite:///var/node.db", validate_default=True)

    @field_validator("url")
    @classmethod
    def _supported_and_resolved(cls, url: str, info: ValidationInfo) -> str:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
            return "sqlite:///" + str(_relative_to_config(url[len("sqlite:///"):], info))
        if not url.startswith(("sqlite:", "postgresql")):
            raise ValueError(f"only sqlite:/// and postgresql:// URLs are supported, got {url.split(':')[0]}:")
        return url


class RulesSettings(_Table):
    """``[rules]``: where the node reads its rules (web admin hook: ``source``)."""

    folder: ConfigPath = Field(Path("deploy/rules"), validate_default=True)
    source: Literal["folder", "database"] = "folder"


class DeliverySettings(_Table):
    """``[delivery]``: sender threads, retries, and how many deliveries share one association."""

    retry_initial_seconds: Positive = 30.0
    retry_max_seconds: Positive = 600.0
    max_attempts: PositiveInt = 10
    workers: PositiveInt = 2
    poll_seconds: Positive = 0.2
    batch_size: PositiveInt = 32


class JobSettings(_Table):
    """``[jobs]``: model runs: worker processes, per-job timeout, retries."""

    workers: PositiveInt = 1
    timeout_seconds: Positive = 900.0
    poll_seconds: Positive = 0.5
    max_attempts: PositiveInt = 2


class ModelsSettings(_Table):
    """``[models]``: where weight files are looked for."""

    weights_dir: ConfigPath = Field(Path("var/weights"), validate_default=True)


class LoggingSettings(_Table):
    """``[logging]``: the log level (any case in the file)."""

    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)] = "INFO"


class WebSettings(_Table):
    """The admin web app (``[web]``, see docs/admin.md): loopback by default; TLS when both files are set."""

    enabled: bool = True
    bind: IPAddress = "127.0.0.1"
    port: Port = 8080
    session_hours: Positive = 8.0
    secure_cookies: bool = False
    max_concurrent_password_checks: PositiveInt = 2  # argon2id needs 64 MiB per check (docs/security.md)
    tls_cert: ExistingFile | None = None
    tls_key: ExistingFile | None = None

    @model_validator(mode="after")
    def _both_tls_files_or_neither(self) -> WebSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert / tls_key: give both (certificate and private key) or neither")
        return self


class NodeConfig(_Table):
    """The whole file.  The flat properties (``config.port``, ``config.database_url``) are what the node reads."""

    node: NodeSettings = _defaults_validated()
    storage: StorageSettings = _defaults_validated()
    database: DatabaseSettings = _defaults_validated()
    completion: CompletionSection = _defaults_validated()
    listeners: Array[Listener] = Field((), alias="listener")
    destinations: dict[str, _TaggedDestination] = Field(default_factory=dict)
    rules: RulesSettings = _defaults_validated()
    delivery: DeliverySettings = _defaults_validated()
    jobs: JobSettings = _defaults_validated()
    models: ModelsSettings = _defaults_validated()
    logging: LoggingSettings = _defaults_validated()
    web: WebSettings = _defaults_validated()

    @model_validator(mode="before")
    @classmethod
    def _implied(cls, data: Any) -> Any:
        """What the file leaves implied: destination names (their table keys), listener completion
        settings on top of ``[completion]``, and one listener on ``node.ae_title`` when none is given."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        tables = data.get("destinations")
        if isinstance(tables, dict):
            data["destinations"] = {name: {**t, _TABLE_NAME: name} if isinstance(t, dict) else t for name, t in tables.items()}
        listeners = data.get("listener", [])
        if listeners == []:
            node = data.get("node")
            title = (node if isinstance(node, dict) else {}).get("ae_title", NodeSettings.model_fields["ae_title"].default)
            if isinstance(title, str) and _is_ae_title(title):  # otherwise node.ae_title is the error to report
                data["listener"] = [{"ae_title": title, "allowed_calling_aets": ["DICOM_NODE_SCU", "STORESCU"]}]
        elif isinstance(listeners, list):
            shared = data.get("completion")
            shared = {k: v for k, v in shared.items() if k in CompletionSettings.model_fields} if isinstance(shared, dict) else {}
            data["listener"] = [
                {**t, "completion": {**shared, **t["completion"]}} if isinstance(t, dict) and isinstance(t.get("completion"), dict) else t
                for t in listeners
            ]
        return data

    @field_validator("listeners")
    @classmethod
    def _unique_titles(cls, listeners: tuple[Listener, ...]) -> tuple[Listener, ...]:
        titles = [listener.ae_title for listener in listeners]
        if len(set(titles)) != len(titles):
            raise ValueError(f"AE titles must be unique, got {titles}")
        return listeners

    # --- what the rest of the node reads -----------------------------------------------------------

    @property
    def ae_title(self) -> str:
        return self.node.ae_title

    @property
    def bind(self) -> str:
        return self.node.bind

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def max_pdu(self) -> int:
        return self.node.max_pdu

    @property
    def uid_root(self) -> str:
        return self.node.uid_root

    @property
    def database_url(self) -> str:
        return self.database.url

    @property
    def rules_folder(self) -> Path:
        return self.rules.folder

    @property
    def rules_source(self) -> Literal["folder", "database"]:
        return self.rules.source

    @property
    def weights_dir(self) -> Path:
        return self.models.weights_dir

    @property
    def log_level(self) -> str:
        return self.logging.level

    def listener(self, called_aet: str) -> Listener | None:
        for listener in self.listeners:
            if listener.ae_title == called_aet:
                return listener
        return None

    def completion_for(self, called_aet: str | None) -> CompletionSettings:
        listener = self.listener(called_aet) if called_aet else None
        return listener.completion if listener and listener.completion else self.completion


# --- errors and loading ----------------------------------------------------------------------------

_TYPE_NAMES = {
    "int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
    "dict_type": "table", "model_type": "table", "tuple_type": "list", "list_type": "list",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _where(loc: tuple[int | str, ...]) -> str:
    """``("listener", 0, "allowed_hosts", 1)`` -> ``listener[0].allowed_hosts[1]``; the file itself for ``()``."""
    parts = list(loc)
    if len(parts) > 2 and parts[0] == "destinations":
        del parts[2]  # the tag ("dicom" / "folder") pydantic puts after a tagged union's key
    where = ""
    for part in parts:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return where or "node.toml"


def _line(error: Any) -> str:
    """One error as ``field: what is wrong, got what``."""
    kind, ctx, value, where = error["type"], error.get("ctx", {}), error.get("input"), _where(error["loc"])
    if kind == "union_tag_invalid":
        return f"{where}.type: must be 'dicom' or 'folder', got {ctx['tag']!r}"
    if kind == "union_tag_not_found":
        return f"{where}.type: required field is missing" if isinstance(value, dict) else f"{where}: expected table, got {type(value).__name__} {value!r}"
    if kind == "missing":
        message = "required field is missing"
    elif kind in _TYPE_NAMES:
        message = f"expected {_TYPE_NAMES[kind]}, got {type(value).__name__} {value!r}"
    elif kind == "value_error":
        message = str(ctx["error"])
    elif kind == "literal_error":
        message = f"must be {ctx['expected']}, got {value!r}"
    elif kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        message = f"must be {sign} {ctx[key]:g}, got {value!r}"
    else:
        message = error["msg"]
    return f"{where}: {message}"


def parse_config(data: dict[str, Any], base: Path) -> NodeConfig:
    """Validate a parsed TOML document; ``base`` resolves relative paths."""
    try:
        return NodeConfig.model_validate(data, context={"base": base})
    except ValidationError as exc:
        raise ConfigError.from_validation(exc) from None


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
    return parse_config(data, path.parent)
