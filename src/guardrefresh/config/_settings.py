"""Every setting of the service, declared once.

:data:`SETTINGS` is the single source of truth: the command-line flags, the
environment variables, the TOML keys, ``--help``, ``--print-config`` and the
validators of the attrs config classes are all generated from it. Adding a setting
means adding one :class:`Setting` row here and one attrs field in ``_service.py``
(a test checks that the two agree).
"""

from __future__ import annotations

import math
import pathlib
import re
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import attrs

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_ORIGIN",
    "ENV_PREFIX",
    "SECTIONS",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "Constraint",
    "Kind",
    "Setting",
    "mask_dsn",
    "toml_key",
    "toml_string",
]

T = TypeVar("T")

#: Every environment variable of the service starts with this.
ENV_PREFIX = "GUARDREFRESH_"
#: Mirrors ``--config``; not a setting itself (it says where settings come from).
CONFIG_ENV = ENV_PREFIX + "CONFIG"
#: The origin of a value that no source supplied.
DEFAULT_ORIGIN = "default"


def toml_string(text: str) -> str:
    """*text* as a TOML basic string; pure ASCII, so any output encoding can carry it."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    out.append('"')
    return "".join(out)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """*key* as written in TOML: bare when it may be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `port = true` is a mistake, not port 1.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return _is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


@attrs.frozen(kw_only=True)
class Kind(Generic[T]):
    """One type of setting: how it is read from text and TOML and written back.

    ``from_text`` reads flag and environment values, ``from_toml`` reads values
    that :mod:`tomllib` produced; both raise :class:`ValueError` (or
    :class:`TypeError`) for input that is not of this kind. Range checks are not
    the kind's business: see :class:`Constraint`.
    """

    #: Used in messages: "allowed: <description> <constraint>".
    description: str
    #: Placeholder of the flag's value in ``--help``.
    metavar: str
    #: True when a Python value is of this kind (validators of the attrs classes).
    accepts: Callable[[object], bool]
    from_text: Callable[[str], T]
    from_toml: Callable[[object], T]
    #: The value as a TOML literal (``--print-config``).
    to_toml: Callable[[T], str]
    #: The value for humans (``--help``, messages).
    to_text: Callable[[T], str] = str

    @property
    def is_switch(self) -> bool:
        """Booleans get a ``--x/--no-x`` flag pair instead of a flag with a value."""
        return self.metavar == ""


def _text_only(parse: Callable[[str], T]) -> Callable[[object], T]:
    def from_toml(value: object) -> T:
        if not isinstance(value, str):
            raise TypeError("not a string")
        return parse(value)

    return from_toml


def _parse_int(text: str) -> int:
    return int(text)


def _int_from_toml(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value


def _parse_float(text: str) -> float:
    return _finite(float(text))


def _float_from_toml(value: object) -> float:
    # `interval = 30` is a TOML integer; a number of seconds may well be written so.
    if not _is_number(value):
        raise TypeError("not a number")
    assert isinstance(value, int | float)
    return _finite(float(value))


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("not a boolean")


def _bool_from_toml(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("not a boolean")
    return value


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _parse_path(text: str) -> pathlib.Path:
    # pathlib.Path("") is ".", which would silently mean "the working directory".
    if not text:
        raise ValueError("empty path")
    return pathlib.Path(text)


def _path_toml(value: pathlib.Path) -> str:
    return toml_string(str(value))


def _identity(text: str) -> str:
    return text


INTEGER: Kind[int] = Kind(
    description="an integer",
    metavar="N",
    accepts=lambda v: isinstance(v, int) and not isinstance(v, bool),
    from_text=_parse_int,
    from_toml=_int_from_toml,
    to_toml=str,
)
SECONDS: Kind[float] = Kind(
    description="a number of seconds",
    metavar="SECONDS",
    accepts=_is_finite_number,
    from_text=_parse_float,
    from_toml=_float_from_toml,
    to_toml=repr,
)
FRACTION: Kind[float] = attrs.evolve(SECONDS, description="a number", metavar="FRACTION")
BOOLEAN: Kind[bool] = Kind(
    description="a boolean (true/false, yes/no, on/off, 1/0)",
    metavar="",
    accepts=lambda v: isinstance(v, bool),
    from_text=_parse_bool,
    from_toml=_bool_from_toml,
    to_toml=_bool_text,
    to_text=_bool_text,
)
HOST: Kind[str] = Kind(
    description="a host name or IP address",
    metavar="HOST",
    accepts=lambda v: isinstance(v, str),
    from_text=_identity,
    from_toml=_text_only(_identity),
    to_toml=toml_string,
)
PATH: Kind[pathlib.Path] = Kind(
    description="a file path",
    metavar="PATH",
    accepts=lambda v: isinstance(v, pathlib.Path),
    from_text=_parse_path,
    from_toml=_text_only(_parse_path),
    to_toml=_path_toml,
)


def _parse_optional_path(text: str) -> pathlib.Path | None:
    # An empty value means "not set", so an environment or TOML value can unset a file.
    return pathlib.Path(text) if text else None


def _optional_path_toml(value: pathlib.Path | None) -> str:
    return toml_string("" if value is None else str(value))


OPTIONAL_PATH: Kind[pathlib.Path | None] = Kind(
    description='a file path ("" = not set)',
    metavar="PATH",
    accepts=lambda v: v is None or isinstance(v, pathlib.Path),
    from_text=_parse_optional_path,
    from_toml=_text_only(_parse_optional_path),
    to_toml=_optional_path_toml,
    to_text=lambda v: "" if v is None else str(v),
)


def _choice(*choices: str, metavar: str = "LEVEL", upper: bool = True) -> Kind[str]:
    def parse(text: str) -> str:
        value = text.upper() if upper else text.lower()
        if value not in choices:
            raise ValueError("not one of the choices")
        return value

    return Kind(
        description=f"one of {', '.join(choices)} (any case)",
        metavar=metavar,
        accepts=lambda v: v in choices,
        from_text=parse,
        from_toml=_text_only(parse),
        to_toml=toml_string,
    )


def _parse_optional_url(text: str) -> str | None:
    # Empty means "not set", so an environment or TOML value can unset it.
    text = text.strip()
    if not text:
        return None
    if not _is_http_url(text):
        raise ValueError("not an http(s) URL")
    return text


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str) or any(ch.isspace() for ch in value):
        return False
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query


OPTIONAL_URL: Kind[str | None] = Kind(
    description='an http:// or https:// URL without a query ("" = not set)',
    metavar="URL",
    accepts=lambda v: v is None or _is_http_url(v),
    from_text=_parse_optional_url,
    from_toml=_text_only(_parse_optional_url),
    to_toml=lambda v: toml_string("" if v is None else v),
    to_text=lambda v: "" if v is None else v,
)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with the password in its user info replaced by ``***`` (for logs)."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    user_info, _, host = parts.netloc.rpartition("@")
    user = user_info.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _is_postgres_url(value: object) -> bool:
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return False
    return parts.scheme in ("postgresql", "postgres")


def _parse_optional_dsn(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not _is_postgres_url(text):
        raise ValueError("not a postgresql:// URL")
    return text


OPTIONAL_DSN: Kind[str | None] = Kind(
    description='a postgresql:// URL ("" = not set)',
    metavar="URL",
    accepts=lambda v: v is None or _is_postgres_url(v),
    from_text=_parse_optional_dsn,
    from_toml=_text_only(_parse_optional_dsn),
    # A password written into the URL is never shown (--print-config, --help).
    to_toml=lambda v: toml_string("" if v is None else mask_dsn(v)),
    to_text=lambda v: "" if v is None else mask_dsn(v),
)


LOG_LEVEL = _choice("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = _choice("text", "json", metavar="FORMAT", upper=False)


@attrs.frozen
class Constraint:
    """A range check on an already typed value, with its wording for messages."""

    test: Callable[[Any], bool]
    #: Appended to the kind's description: "an integer" + " from 0 to 65535".
    text: str = ""


_ANYTHING = Constraint(lambda _v: True)
_NON_EMPTY_NO_SPACE = Constraint(
    lambda v: bool(v) and not any(ch.isspace() for ch in v), "(non-empty, no spaces)"
)


def _between(low: float, high: float) -> Constraint:
    return Constraint(lambda v: low <= v <= high, f"from {low:g} to {high:g}")


def _at_least(low: float) -> Constraint:
    return Constraint(lambda v: v >= low, f">= {low:g}")


def _above(low: float) -> Constraint:
    return Constraint(lambda v: v > low, f"> {low:g}")


@attrs.frozen(kw_only=True)
class Setting(Generic[T]):
    """One setting: where it lives in each source, its type, default, range and help."""

    section: str
    key: str
    #: For a switch, the positive flag; ``--no-<rest>`` is generated next to it.
    flag: str
    env: str
    kind: Kind[T]
    default: T
    help: str
    constraint: Constraint = _ANYTHING

    def __attrs_post_init__(self) -> None:
        # A bad row is a programming error: fail at import, not on some user's input.
        if not self.is_valid(self.default):
            raise TypeError(f"default of {self.name} is not allowed: {self.default!r}")
        if not (self.flag.startswith("--") and self.env.startswith(ENV_PREFIX)):
            raise TypeError(f"bad flag or environment variable name for {self.name}")

    @property
    def name(self) -> str:
        """``section.key``: the setting's identity everywhere in this package."""
        return f"{self.section}.{self.key}"

    @property
    def toml_name(self) -> str:
        """How users see the TOML location: ``[section] key``."""
        return f"[{self.section}] {toml_key(self.key)}"

    @property
    def negative_flag(self) -> str | None:
        """``--no-<flag>`` for switches, None otherwise."""
        return "--no-" + self.flag[2:] if self.kind.is_switch else None

    @property
    def allowed(self) -> str:
        """What values are allowed, for messages and ``--help``."""
        return f"{self.kind.description} {self.constraint.text}".strip()

    def is_valid(self, value: object) -> bool:
        """True when *value* is of the right kind and within range."""
        return self.kind.accepts(value) and bool(self.constraint.test(value))


SETTINGS: tuple[Setting[Any], ...] = (
    # [server]
    Setting(
        section="server",
        key="host",
        flag="--host",
        env="GUARDREFRESH_HOST",
        kind=HOST,
        default="127.0.0.1",
        constraint=_NON_EMPTY_NO_SPACE,
        help="Address the gRPC server listens on. The default is loopback only; "
        "0.0.0.0 (or ::) listens on all interfaces.",
    ),
    Setting(
        section="server",
        key="port",
        flag="--port",
        env="GUARDREFRESH_PORT",
        kind=INTEGER,
        default=50051,
        constraint=_between(0, 65535),
        help="TCP port of the gRPC server; 0 picks a free port.",
    ),
    Setting(
        section="server",
        key="shutdown_grace",
        flag="--shutdown-grace",
        env="GUARDREFRESH_SHUTDOWN_GRACE",
        kind=SECONDS,
        default=10.0,
        constraint=_at_least(0),
        help="On SIGTERM/SIGINT, seconds in-flight requests get to finish before they are cut off.",
    ),
    Setting(
        section="server",
        key="max_message_bytes",
        flag="--max-message-bytes",
        env="GUARDREFRESH_MAX_MESSAGE_BYTES",
        kind=INTEGER,
        default=4 * 1024 * 1024,
        constraint=_at_least(1024),
        help="Largest gRPC request message accepted, in bytes; a larger one is refused with RESOURCE_EXHAUSTED before it is buffered.",
    ),
    Setting(
        section="server",
        key="max_rules_per_install",
        flag="--max-rules-per-install",
        env="GUARDREFRESH_MAX_RULES_PER_INSTALL",
        kind=INTEGER,
        default=10_000,
        constraint=_at_least(1),
        help="Most rules a single InstallRules request may carry.",
    ),
    Setting(
        section="server",
        key="max_connections",
        flag="--max-connections",
        env="GUARDREFRESH_MAX_CONNECTIONS",
        kind=INTEGER,
        default=0,
        constraint=_at_least(0),
        help="Most client connections open at once; a connection beyond it is closed as soon "
        "as it is accepted. 0 = the open-file limit minus 64 (at least 16), leaving "
        "descriptors for storage and metrics.",
    ),
    Setting(
        section="server",
        key="idle_timeout",
        flag="--idle-timeout",
        env="GUARDREFRESH_IDLE_TIMEOUT",
        kind=SECONDS,
        default=300.0,
        constraint=_at_least(0),
        help="Seconds a connection may stay open without an open stream before it gets "
        "GOAWAY and is closed; 0 = never.",
    ),
    Setting(
        section="server",
        key="max_concurrent_streams",
        flag="--max-concurrent-streams",
        env="GUARDREFRESH_MAX_CONCURRENT_STREAMS",
        kind=INTEGER,
        default=100,
        constraint=_between(1, 2**31 - 1),
        help="HTTP/2 streams (calls) a client may have open at once on one connection, "
        "advertised in SETTINGS_MAX_CONCURRENT_STREAMS; a client that opens more loses "
        "the connection.",
    ),
    Setting(
        section="server",
        key="max_pending_request_bytes",
        flag="--max-pending-request-bytes",
        env="GUARDREFRESH_MAX_PENDING_REQUEST_BYTES",
        kind=INTEGER,
        default=64 * 1024 * 1024,
        constraint=_at_least(1024),
        help="Bytes of request messages being received or waiting to run, in all; a call "
        "whose message would go beyond it is refused with RESOURCE_EXHAUSTED.",
    ),
    Setting(
        section="server",
        key="request_timeout",
        flag="--request-timeout",
        env="GUARDREFRESH_REQUEST_TIMEOUT",
        kind=SECONDS,
        default=30.0,
        constraint=_above(0),
        help="Seconds a call's request message may take to arrive after its headers; a "
        "slower call ends with DEADLINE_EXCEEDED and its stream is reset.",
    ),
    Setting(
        section="server",
        key="max_concurrent_rpcs",
        flag="--max-concurrent-rpcs",
        env="GUARDREFRESH_MAX_CONCURRENT_RPCS",
        kind=INTEGER,
        default=0,
        constraint=_at_least(0),
        help="Calls whose handlers run at once (health checks not counted); more wait in "
        "a queue shared fairly between connections. 0 = 8 per CPU this process may use.",
    ),
    Setting(
        section="server",
        key="max_queued_rpcs",
        flag="--max-queued-rpcs",
        env="GUARDREFRESH_MAX_QUEUED_RPCS",
        kind=INTEGER,
        default=0,
        constraint=_at_least(0),
        help="Calls that may wait for a slot; beyond it the connection with the most "
        "waiting is refused with RESOURCE_EXHAUSTED. 0 = 4 x max_concurrent_rpcs.",
    ),
    Setting(
        section="server",
        key="ready_file",
        flag="--ready-file",
        env="GUARDREFRESH_READY_FILE",
        kind=OPTIONAL_PATH,
        default=None,
        help="Once the service listens and health is SERVING (in fleet mode health waits for "
        "the first sync), write this file (atomically) with the bound ports as JSON, "
        '{"host", "port", "metrics_port", "pid"}, and remove it at exit: a launcher waits '
        "for it instead of reading the log; handy with --port 0.",
    ),
    # [storage]
    Setting(
        section="storage",
        key="warm_storage",
        flag="--warm-storage",
        env="GUARDREFRESH_WARM_STORAGE",
        kind=PATH,
        default=pathlib.Path("var/data/warm_storage.bin"),
        help="Warm storage file, the durable rule store; "
        "a relative path is taken from the working directory.",
    ),
    Setting(
        section="storage",
        key="hot_capacity",
        flag="--hot-capacity",
        env="GUARDREFRESH_HOT_CAPACITY",
        kind=INTEGER,
        default=10_000,
        constraint=_at_least(1),
        help="Most rules held in the in-memory hot cache (LRU).",
    ),
    # [scheduler]
    Setting(
        section="scheduler",
        key="refresh_interval",
        flag="--refresh-interval",
        env="GUARDREFRESH_REFRESH_INTERVAL",
        kind=SECONDS,
        default=21600.0,
        constraint=_above(0),
        help="Seconds between periodic refreshes of the hot cache from warm storage "
        "(21600 = 6 h); must not exceed max_interval.",
    ),
    Setting(
        section="scheduler",
        key="jitter",
        flag="--jitter",
        env="GUARDREFRESH_JITTER",
        kind=FRACTION,
        default=0.1,
        constraint=_between(0, 0.5),
        help="Each wait is drawn from interval * [1 - jitter, 1 + jitter], so that "
        "services started together do not refresh in lockstep; 0 = exact.",
    ),
    Setting(
        section="scheduler",
        key="enabled",
        flag="--scheduler",
        env="GUARDREFRESH_SCHEDULER_ENABLED",
        kind=BOOLEAN,
        default=True,
        help="Run the periodic refresh; with --no-scheduler only RefreshRules "
        "requests refresh the hot cache.",
    ),
    Setting(
        section="scheduler",
        key="refresh_on_start",
        flag="--refresh-on-start",
        env="GUARDREFRESH_REFRESH_ON_START",
        kind=BOOLEAN,
        default=True,
        help="Load warm storage into the hot cache before reporting ready.",
    ),
    Setting(
        section="scheduler",
        key="backoff_initial",
        flag="--backoff-initial",
        env="GUARDREFRESH_BACKOFF_INITIAL",
        kind=SECONDS,
        default=30.0,
        constraint=_above(0),
        help="First retry delay after a failed refresh, doubled per further failure "
        "up to the interval; must not exceed refresh_interval.",
    ),
    Setting(
        section="scheduler",
        key="max_interval",
        flag="--max-interval",
        env="GUARDREFRESH_MAX_INTERVAL",
        kind=SECONDS,
        default=86400.0,
        constraint=_above(0),
        help="Upper bound in seconds of the interval when it is stretched because "
        "refreshes take long; must be >= refresh_interval.",
    ),
    # [logging]
    Setting(
        section="logging",
        key="level",
        flag="--log-level",
        env="GUARDREFRESH_LOG_LEVEL",
        kind=LOG_LEVEL,
        default="INFO",
        help="Least severe level written to the log on stderr.",
    ),
    Setting(
        section="logging",
        key="format",
        flag="--log-format",
        env="GUARDREFRESH_LOG_FORMAT",
        kind=LOG_FORMAT,
        default="text",
        help="text: one human-readable line per event; json: one JSON object per line "
        "(timestamp, level, logger, message and structured fields).",
    ),
    # [metrics]
    Setting(
        section="metrics",
        key="host",
        flag="--metrics-host",
        env="GUARDREFRESH_METRICS_HOST",
        kind=HOST,
        default="127.0.0.1",
        constraint=_NON_EMPTY_NO_SPACE,
        help="Address the Prometheus /metrics endpoint listens on (loopback by default).",
    ),
    Setting(
        section="metrics",
        key="port",
        flag="--metrics-port",
        env="GUARDREFRESH_METRICS_PORT",
        kind=INTEGER,
        default=9464,
        constraint=_between(0, 65535),
        help="TCP port of the Prometheus /metrics endpoint; 0 turns it off.",
    ),
    # [health]
    Setting(
        section="health",
        key="max_staleness",
        flag="--max-staleness",
        env="GUARDREFRESH_MAX_STALENESS",
        kind=SECONDS,
        default=0.0,
        constraint=_at_least(0),
        help="Seconds after the last successful refresh when the rules count as stale "
        "(status and metrics say so); 0 = twice the refresh interval.",
    ),
    Setting(
        section="health",
        key="fail_when_stale",
        flag="--fail-when-stale",
        env="GUARDREFRESH_FAIL_WHEN_STALE",
        kind=BOOLEAN,
        default=False,
        help="Report NOT_SERVING on the health check while the rules are stale "
        "(default: degraded but up).",
    ),
    # [enforce]
    Setting(
        section="enforce",
        key="management_plane_url",
        flag="--management-plane-url",
        env="GUARDREFRESH_MANAGEMENT_PLANE_URL",
        kind=OPTIONAL_URL,
        default=None,
        help="Base URL of the Guard management plane (e.g. http://127.0.0.1:8001/api/v2): "
        "Enforce requests without an intent_vector are encoded by POST <URL>/encode/intent. "
        "Unset, such requests are denied (fail-closed).",
    ),
    # [replication]
    Setting(
        section="replication",
        key="dsn",
        flag="--replication",
        env="GUARDREFRESH_REPLICATION",
        kind=OPTIONAL_DSN,
        default=None,
        help="Fleet mode: replicate the rule set through this PostgreSQL database "
        "(postgresql://USER@HOST:PORT/DB?...) with every other replica given the same URL. "
        "Put no password in it: use --replication-password-file or libpq's environment "
        "(PGPASSWORD, ~/.pgpass). Unset: a single node, rules in warm storage only.",
    ),
    Setting(
        section="replication",
        key="password_file",
        flag="--replication-password-file",
        env="GUARDREFRESH_REPLICATION_PASSWORD_FILE",
        kind=OPTIONAL_PATH,
        default=None,
        help="File holding the PostgreSQL password of --replication (one line; it must not "
        "be readable by group or others). Never logged.",
    ),
    Setting(
        section="replication",
        key="max_lag",
        flag="--max-replication-lag",
        env="GUARDREFRESH_MAX_REPLICATION_LAG",
        kind=SECONDS,
        default=0.0,
        constraint=_at_least(0),
        help="Seconds this replica may be behind the fleet (or out of touch with its "
        "database) before its rules count as stale; with --fail-when-stale the health "
        "check then reports NOT_SERVING. 0 = no limit.",
    ),
    Setting(
        section="replication",
        key="tombstone_retention",
        flag="--tombstone-retention",
        env="GUARDREFRESH_TOMBSTONE_RETENTION",
        kind=SECONDS,
        default=7 * 86400.0,
        constraint=_above(0),
        help="Seconds a removed rule's tombstone stays in the database (604800 = 7 days); "
        "a replica stopped for longer resynchronises the whole rule set when it returns.",
    ),
    # [security]
    Setting(
        section="security",
        key="tls_cert",
        flag="--tls-cert",
        env="GUARDREFRESH_TLS_CERT",
        kind=OPTIONAL_PATH,
        default=None,
        help="PEM certificate chain: serve gRPC over TLS (needs --tls-key).",
    ),
    Setting(
        section="security",
        key="tls_key",
        flag="--tls-key",
        env="GUARDREFRESH_TLS_KEY",
        kind=OPTIONAL_PATH,
        default=None,
        help="PEM private key of --tls-cert.",
    ),
    Setting(
        section="security",
        key="tls_client_ca",
        flag="--tls-client-ca",
        env="GUARDREFRESH_TLS_CLIENT_CA",
        kind=OPTIONAL_PATH,
        default=None,
        help="PEM CA bundle: require client certificates signed by it (mutual TLS).",
    ),
    Setting(
        section="security",
        key="admin_token_file",
        flag="--admin-token-file",
        env="GUARDREFRESH_ADMIN_TOKEN_FILE",
        kind=OPTIONAL_PATH,
        default=None,
        help="File holding the admin token: InstallRules, RemovePolicy, RemoveAgentRules "
        "and RefreshRules then require 'authorization: Bearer <token>' metadata.",
    ),
    Setting(
        section="security",
        key="auth_reads",
        flag="--auth-reads",
        env="GUARDREFRESH_AUTH_READS",
        kind=BOOLEAN,
        default=False,
        help="With --admin-token-file, require the token on read-only RPCs too.",
    ),
    # [telemetry]
    Setting(
        section="telemetry",
        key="enabled",
        flag="--telemetry",
        env="GUARDREFRESH_TELEMETRY_ENABLED",
        kind=BOOLEAN,
        default=True,
        help="Record every Enforce decision as a session (QueryTelemetry, GetSession, "
        "guardrefresh sessions); with --no-telemetry nothing is recorded and "
        "QueryTelemetry answers FAILED_PRECONDITION.",
    ),
    Setting(
        section="telemetry",
        key="db",
        flag="--telemetry-db",
        env="GUARDREFRESH_TELEMETRY_DB",
        kind=OPTIONAL_PATH,
        default=None,
        help="SQLite file of the enforcement sessions; empty = telemetry.db in the "
        "directory of --warm-storage.",
    ),
    Setting(
        section="telemetry",
        key="retention",
        flag="--telemetry-retention",
        env="GUARDREFRESH_TELEMETRY_RETENTION",
        kind=SECONDS,
        default=7 * 86400.0,
        constraint=_above(0),
        help="Seconds a session is kept (604800 = 7 days); older ones are deleted in the "
        "background.",
    ),
    Setting(
        section="telemetry",
        key="max_sessions",
        flag="--telemetry-max-sessions",
        env="GUARDREFRESH_TELEMETRY_MAX_SESSIONS",
        kind=INTEGER,
        default=1_000_000,
        constraint=_at_least(1),
        help="Most sessions kept; beyond it the oldest are deleted in the background.",
    ),
    Setting(
        section="telemetry",
        key="batch_window",
        flag="--telemetry-batch-window",
        env="GUARDREFRESH_TELEMETRY_BATCH_WINDOW",
        kind=SECONDS,
        default=0.25,
        constraint=_between(0.001, 1),
        help="Seconds the writer lets sessions gather before committing them in one "
        "transaction; a crash (SIGKILL) loses at most this window.",
    ),
    Setting(
        section="telemetry",
        key="queue_size",
        flag="--telemetry-queue-size",
        env="GUARDREFRESH_TELEMETRY_QUEUE_SIZE",
        kind=INTEGER,
        default=10_000,
        constraint=_between(1, 1_000_000),
        help="Sessions waiting for the writer at most; when full, new ones are dropped "
        "and counted (guardrefresh_telemetry_dropped_total), Enforce never waits.",
    ),
)

#: The sections in table order (the order of ``--help`` and ``--print-config``).
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS))

SETTINGS_BY_NAME: Mapping[str, Setting[Any]] = types.MappingProxyType({s.name: s for s in SETTINGS})
